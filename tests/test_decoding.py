"""Decoding: deterministic, batched = one by one, cached = uncached, beam scores = teacher-forced scores."""

import pytest
import torch

from mome_cli.decoding import DecodingOptions, decode, token_budget
from mome_cli.options import MAX_BEAM

from conftest import clip, random_features, tiny_model

OPTIONS = DecodingOptions(max_new_tokens=10)


def uncached_greedy(model, features, rate, steps):
    """Greedy decoding that re-runs the whole sequence every step (no KV cache)."""
    prefix = model.prefix(features, rate)
    embeds, table, eos, tokens = prefix.embeds, model.llm.get_input_embeddings(), model.tokenizer.eos_token_id, []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model.llm(inputs_embeds=embeds).logits[0, -1].argmax())
            if token == eos:
                break
            tokens.append(token)
            embeds = torch.cat([embeds, table(torch.tensor([[token]]))], dim=1)
    return tokens


def teacher_forced_logprob(model, features, rate, tokens, ended):
    prefix = model.prefix(features, rate)
    target = tokens + ([model.tokenizer.eos_token_id] if ended else [])
    table = model.llm.get_input_embeddings()
    with torch.no_grad():
        embeds = torch.cat([prefix.embeds, table(torch.tensor([target]))], dim=1)
        logprobs = model.llm(inputs_embeds=embeds).logits[0].float().log_softmax(-1)
    L = prefix.embeds.shape[1]
    return sum(float(logprobs[L - 1 + i, t]) for i, t in enumerate(target))


@pytest.mark.parametrize("beam", [1, 4])
def test_same_input_same_output(model, beam):
    features = random_features()
    options = DecodingOptions(max_new_tokens=10, beam_size=beam)
    assert decode(model, features, (16, 5), options=options) == decode(model, features, (16, 5), options=options)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("rate", [(4, 2), (16, 5)])
def test_batched_equals_one_by_one(model, beam, rate):
    features = random_features((50, 37, 21))
    options = DecodingOptions(max_new_tokens=10, beam_size=beam)
    batched = decode(model, features, rate, options=options)
    alone = [decode(model, clip(features, i), rate, options=options)[0] for i in range(3)]
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    for b, a in zip(batched, alone):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)


@pytest.mark.parametrize("beam, static", [(1, False), (1, True), (3, False)], ids=["greedy", "static-cache", "beam"])
def test_each_row_keeps_to_its_own_limit_as_it_would_alone(model, beam, static):
    """A short segment batched with a long one took the batch's token limit: a model that does not end wrote on past
    where it stops alone, so --batch-size changed its transcript."""
    features = random_features((50, 37, 21))
    limits = [12, 3, 7]
    unlimited = decode(model, features, (4, 2), options=DecodingOptions(max_new_tokens=12, beam_size=beam))
    assert all(len(r.tokens) > n for r, n in zip(unlimited[1:], limits[1:]))  # the limits cut rows 1 and 2 short
    options = DecodingOptions(max_new_tokens=12, beam_size=beam)
    batched = decode(model, features, (4, 2), options=options, static=static, limits=limits)
    alone = [decode(model, clip(features, i), (4, 2), options=DecodingOptions(max_new_tokens=n, beam_size=beam),
                    static=static)[0] for i, n in enumerate(limits)]
    assert [r.tokens for r in batched] == [r.tokens for r in alone]
    for b, a in zip(batched, alone):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)


@pytest.mark.parametrize("limits", [[4, 4], [4, 4, 13], [0, 4, 4]])
def test_limits_are_one_per_row_within_max_new_tokens(model, limits):
    with pytest.raises(ValueError, match="limits must be 3 numbers in \\[1, 12\\]"):
        decode(model, random_features((50, 37, 21)), (4, 2), options=DecodingOptions(max_new_tokens=12), limits=limits)


def test_cached_greedy_equals_uncached_reference(model):
    features = random_features((37,))
    result = decode(model, features, (4, 5), options=OPTIONS)[0]
    assert result.tokens == uncached_greedy(model, features, (4, 5), OPTIONS.max_new_tokens)


@pytest.mark.parametrize("beam", [1, 5])
def test_reported_logprob_is_the_sequence_logprob(model, beam):
    features = random_features((44,))
    result = decode(model, features, (4, 2), options=DecodingOptions(max_new_tokens=10, beam_size=beam))[0]
    ended = len(result.tokens) < 10
    assert result.logprob == pytest.approx(teacher_forced_logprob(model, features, (4, 2), result.tokens, ended),
                                           abs=1e-3)


def test_beam_search_gives_transformers_beam_search():
    """Only an end of sentence among the top K candidates ends a hypothesis, as in transformers' generate (with
    early_stopping: a clip ends once K have): one ranked K to 2K-1 used to end one too, filling the K ended with weak
    short ones, so that search stopped early on a worse transcript. An EOS bias makes EOS compete, as near the end
    of an utterance."""
    model = tiny_model()
    eos = model.tokenizer.eos_token_id
    bias = 4.0 * (torch.arange(model.llm.config.vocab_size) == eos)
    model.llm.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    options, differ = DecodingOptions(max_new_tokens=12, beam_size=5), []
    for seed in range(3):
        features = random_features((50, 23, 37), seed=seed)
        for rate in [(4, 2), (16, 5)]:
            for i in range(3):
                one = clip(features, i)
                ours = decode(model, one, rate, options=options, static=False)[0].tokens
                prefix = model.prefix(one, rate)
                with torch.no_grad():
                    out = model.llm.generate(inputs_embeds=prefix.embeds, attention_mask=prefix.attention_mask,
                                             do_sample=False, num_beams=5, early_stopping=True, length_penalty=1.0,
                                             max_new_tokens=12, eos_token_id=eos, pad_token_id=eos)[0].tolist()
                theirs = out[:out.index(eos)] if eos in out else out
                if ours != theirs:
                    differ.append((seed, rate, i, ours, theirs))
    assert not differ


def test_modes_and_rates_decode_from_one_model(model):
    features = random_features((50, 20))
    for mode, rate in [("a", (16, None)), ("v", (None, 2)), ("av", (4, 5))]:
        assert len(decode(model, features, rate, mode, OPTIONS)) == 2
    with pytest.raises(ValueError, match="was not trained"):
        decode(model, features, (8, 2), options=OPTIONS)
    assert len(decode(model, features, (8, 2), options=OPTIONS, any_rate=True)) == 2


@pytest.mark.parametrize("seconds, budget", [(0.5, 64), (2.0, 64), (3.0, 96), (3.1, 128), (8.0, 256), (20.0, 640)])
def test_token_budget_grows_with_the_segment_in_steps_of_32(seconds, budget):
    # 32 tokens a second: a byte-level LM writing fast speech (5 words of 6 bytes a second) is not cut short
    assert token_budget(seconds) == budget


@pytest.mark.parametrize("kw", [dict(beam_size=0), dict(beam_size=MAX_BEAM + 1), dict(max_new_tokens=0),
                                dict(length_penalty=3.0)])
def test_options_reject_impossible_values(kw):
    with pytest.raises(ValueError):
        DecodingOptions(**kw)


@pytest.mark.parametrize("rate", [(4, 2), (16, 5)])
def test_static_cache_greedy_gives_the_dynamic_cache_tokens(model, rate):
    """StaticGreedy (the CUDA road, run here without graph capture) = GreedyDecoder, batched and one by one."""
    options = DecodingOptions(max_new_tokens=20)
    features = random_features((50, 37, 21))
    static = decode(model, features, rate, options=options, static=True)
    dynamic = decode(model, features, rate, options=options, static=False)
    assert [r.tokens for r in static] == [r.tokens for r in dynamic]
    for s, d in zip(static, dynamic):
        assert s.logprob == pytest.approx(d.logprob, abs=1e-4)
    alone = [decode(model, clip(features, i), rate, options=options, static=True)[0] for i in range(3)]
    assert [r.tokens for r in alone] == [r.tokens for r in dynamic]


def test_static_cache_runner_is_reused_for_a_batch_that_fits(model):
    options = DecodingOptions(max_new_tokens=12)
    first, second = random_features((40, 30)), random_features((38, 33))
    decode(model, first, (4, 2), options=options, static=True)
    runner = model._static_greedy
    again = decode(model, second, (4, 2), options=options, static=True)  # same batch size, prefix fits the cache
    assert model._static_greedy is runner
    assert [r.tokens for r in again] == [r.tokens for r in decode(model, second, (4, 2), options=options, static=False)]
    shorter = random_features((20, 12))  # a shorter prefix and fewer tokens: still this runner
    fewer = DecodingOptions(max_new_tokens=5)
    short = decode(model, shorter, (4, 2), options=fewer, static=True)
    assert model._static_greedy is runner
    assert [r.tokens for r in short] == [r.tokens for r in decode(model, shorter, (4, 2), options=fewer, static=False)]
    assert all(len(r.tokens) <= 5 for r in short)
    decode(model, random_features((40, 30, 20)), (4, 2), options=options, static=True)  # another batch size
    assert model._static_greedy is not runner


def test_static_cache_runner_is_not_reused_once_the_weights_moved():
    model = tiny_model()
    options = DecodingOptions(max_new_tokens=8)
    features = random_features((40, 30))
    decode(model, features, (4, 2), options=options, static=True)
    runner = model._static_greedy
    model.mome.to(torch.float64).to(torch.float32)  # new storage for the MoME weights, same values
    again = decode(model, features, (4, 2), options=options, static=True)
    assert model._static_greedy is not runner
    assert [r.tokens for r in again] == [r.tokens for r in decode(model, features, (4, 2), options=options,
                                                                  static=False)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_greedy_gives_the_eager_tokens():
    """On a GPU: the captured and replayed decode step = the same step run eagerly = the dynamic cache."""
    gpu = tiny_model().cuda()
    options = DecodingOptions(max_new_tokens=30)
    features = random_features((50, 37, 21))
    features = type(features)(**{k: v.cuda() for k, v in vars(features).items()})
    graphs = [decode(gpu, features, (4, 2), options=options) for _ in range(2)]  # capture, then replay only
    assert gpu._static_greedy.graph is not None
    static_eager = decode(gpu, features, (4, 2), options=DecodingOptions(max_new_tokens=30, cuda_graphs=False),
                          static=True)
    dynamic = decode(gpu, features, (4, 2), options=options, static=False)
    assert [r.tokens for r in graphs[0]] == [r.tokens for r in graphs[1]] == [r.tokens for r in static_eager]
    assert [r.tokens for r in graphs[0]] == [r.tokens for r in dynamic]
    for g, e in zip(graphs[0], dynamic):
        assert g.logprob == pytest.approx(e.logprob, abs=1e-3)


def test_transcripts_carry_no_control_characters(monkeypatch):
    """A byte-level model can emit ESC and other control bytes; printed to a terminal they would be escape sequences."""
    model = tiny_model()
    monkeypatch.setattr(model.tokenizer, "decode",
                        lambda ids, **kwargs: "a\x1b[2Jb\x00c\td\r\ne\x9b1m f\u00e9 x\u202egnp.exe y\u200dz")
    result = decode(model, clip(random_features(), 0), (4, 2), options=DecodingOptions(max_new_tokens=2))[0]
    assert result.text == "a [2Jb c d e 1m f\u00e9 x gnp.exe y\u200dz"  # a joiner (U+200D) is text, not control


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encoding_a_batch_and_building_its_prefix_never_wait_for_the_gpu(tmp_path):
    """Each wait for the GPU between the encoders and the prefill keeps the host from queueing the next stage while
    the GPU runs this one (RESULTS.md: the video encoder took 23 ms of wall time for 13 ms of GPU time). CUDA's sync
    debug mode makes any such wait (a blocking copy, a read of a device value) an error."""
    import numpy as np

    from mome_cli.recognizer import load_recognizer

    recognizer = load_recognizer("tiny", device="cuda", home=tmp_path)
    rng = np.random.default_rng(0)
    audio = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (32_000, 20_000)]
    rois = [rng.integers(0, 256, (n, 96, 96), dtype=np.uint8) for n in (50, 31)]
    rate = tuple(recognizer.config.rates[0])
    for check in (False, True):  # the first time allocates pinned memory, plans FFTs, captures graphs
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if check else "default")
        try:
            with torch.inference_mode():
                features = recognizer.features(audio, rois)
                prefix = recognizer.model.prefix(features, rate, "av")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert prefix.embeds.is_cuda and features.audio_lengths.tolist() == [100, 63]
