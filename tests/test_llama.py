"""mome's own Llama, Whisper encoder and features (llama.py, whisper.py) against transformers' on the same weights:
the CPU inference path must give the numbers and the transcripts transformers gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, DynamicCache

from conftest import clip, random_features, tiny_config
from mome_cli.checkpoint import CheckpointError
from mome_cli.decoding import DecodingOptions, decode
from mome_cli.encoders import TINY_WHISPER, EncoderError, build_whisper, load_whisper
from mome_cli.llama import KVCache, LlamaForCausalLM, NotSupported, load_llama
from mome_cli.llm import TINY_SHAPE, bpe_tokenizer, build_byte_llm, load_llm
from mome_cli.model import AVSRModel
from mome_cli.whisper import LogMel, WhisperEncoder, load_whisper_encoder

ROOT = Path(__file__).parents[1]
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64, rope_theta=500000.0)


def save_llm(folder, rope=None, model_type="llama", tokenizer=None):
    shape = dict(TINY_SHAPE, **({"rope_parameters": rope} if rope else {}))
    model, tokenizer = build_byte_llm(model_type, shape, seed=1, tokenizer=tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


def left_padded(B=3, L=7, H=64):
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(B, L, H, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, :1] = 0
    return embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def assert_same_prefill(hf, folder):
    """llama.py's model read from folder gives hf's logits at every real position of a left-padded batch."""
    ours, _ = load_llama(folder)
    embeds, mask, positions = left_padded()
    with torch.no_grad():
        expected = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        got = ours(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE], ids=["default-rope", "llama3-rope"])
def test_llama_gives_transformers_logits_at_prefill_and_each_cached_step(tmp_path, rope):
    hf, _ = save_llm(tmp_path, rope)
    ours, _ = load_llama(tmp_path)
    assert isinstance(ours, LlamaForCausalLM) and not any(p.requires_grad for p in ours.parameters())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in hf.named_parameters()]  # names and order
    embeds, mask, positions = left_padded()
    theirs_cache, our_cache = DynamicCache(config=hf.config), KVCache()
    with torch.no_grad():
        expected = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                      past_key_values=theirs_cache, use_cache=True).logits
        got = ours(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                   past_key_values=our_cache, use_cache=True).logits
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)  # real positions
        position = positions[:, -1:]
        for step in range(4):  # a few decoding steps on the caches
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
            position = position + 1
            tokens = torch.tensor([[5 + step], [60], [200]])
            expected = hf(input_ids=tokens, attention_mask=mask, position_ids=position, past_key_values=theirs_cache,
                          use_cache=True).logits
            got = ours(input_ids=tokens, attention_mask=mask, position_ids=position, past_key_values=our_cache,
                       use_cache=True, logits_to_keep=1).logits
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert our_cache.get_seq_length() == 7 + 4


def test_llama_reads_transformers_v4_config_keys(tmp_path):
    """Hub checkpoints of Llama 3.x write rope_theta and rope_scaling, not v5's rope_parameters."""
    hf, _ = save_llm(tmp_path, LLAMA3_ROPE)
    config = json.loads((tmp_path / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_same_prefill(hf, tmp_path)


@pytest.mark.parametrize("clean_up", [False, True])  # True: ignored for BPE vocabularies by transformers 5, and here
def test_tokenizer_encodes_and_decodes_as_transformers_does(tmp_path, clean_up):
    texts = ["the cat sat on the mat", "isn't it , he said . ok ?", "naïve café 42 ", ""]
    save_llm(tmp_path, tokenizer=bpe_tokenizer(texts * 20, vocab_size=300))
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "clean_up_tokenization_spaces": clean_up}))
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    _, ours = load_llama(tmp_path)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(ours, name) == getattr(theirs, name) is not None, name
    assert len(ours) == len(theirs)
    for text in texts:
        ids = ours(text, add_special_tokens=False).input_ids
        assert ids == theirs(text, add_special_tokens=False).input_ids
        with_specials = [theirs.bos_token_id] + ids + [theirs.eos_token_id]
        for skip in (False, True):
            assert ours.decode(with_specials, skip_special_tokens=skip) == theirs.decode(
                with_specials, skip_special_tokens=skip)


def test_models_llama_does_not_run_are_left_to_transformers(tmp_path):
    save_llm(tmp_path / "qwen", model_type="qwen2")
    with pytest.raises(NotSupported, match="qwen2"):
        load_llama(tmp_path / "qwen")
    model, _ = load_llm(str(tmp_path / "qwen"), native=True)  # falls back
    assert type(model).__module__.startswith("transformers.")
    save_llm(tmp_path / "llama")
    assert isinstance(load_llm(str(tmp_path / "llama"), native=True)[0], LlamaForCausalLM)
    assert not isinstance(load_llm(str(tmp_path / "llama"))[0], LlamaForCausalLM)  # native is asked for, not default


def test_llama_weights_that_do_not_fit_are_a_checkpoint_error(tmp_path):
    save_llm(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"] = weights["model.layers.1.mlp.up_proj.weight"][:-1]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"up_proj.weight is \(127, 64\)"):
        load_llm(str(tmp_path), native=True)
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing.*up_proj"):
        load_llm(str(tmp_path), native=True)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        load_llm(str(tmp_path), native=True)


def whisper_config() -> dict:
    from transformers import WhisperConfig

    return WhisperConfig(**TINY_WHISPER).to_dict()


@pytest.mark.parametrize("change, said", [
    (lambda config: {**config, "hidden_size": "64"}, "hidden_size"),
    (lambda config: {**config, "rms_norm_eps": "1e-6"}, "rms_norm_eps"),
    (lambda config: [1, 2], "not a JSON object of settings (a list)"),
    (lambda config: {**config, "model_type": "gpt2"},
     "model_type 'gpt2': GPT2LMHeadModel has no decoder layers at .model.layers; MoME needs a Llama-style LM"),
    (lambda config: whisper_config(), "model_type 'whisper': decoder layer 0 of WhisperForCausalLM has no .mlp"),
], ids=["text-for-a-whole-number", "text-for-a-number", "a-list", "gpt2", "whisper"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "transformers"])
def test_an_llm_config_of_the_wrong_type_or_model_is_a_checkpoint_error_naming_it(tmp_path, change, said, native):
    """It was a TypeError from torch.empty, an AttributeError, or, for another architecture, a model that
    transformers built (with a report of every key) and MoME then failed to attach to."""
    save_llm(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(change(config)))
    with pytest.raises(CheckpointError) as e:
        load_llm(str(tmp_path), native=native)
    message = str(e.value)
    assert message.startswith(str(tmp_path)) and said in message and "\n" not in message, message


@pytest.mark.parametrize("file, change, said", [
    ("config.json", lambda config: {**config, "d_model": "64"}, "not a Whisper config: d_model must be a whole "
                                                                "number >= 1, got '64'"),
    ("config.json", lambda config: [1, 2], "not a JSON object of settings (a list)"),
    ("config.json", lambda config: {**config, "model_type": "llama"}, "not a Whisper config: model_type 'llama'"),
    ("preprocessor_config.json", lambda config: {**config, "feature_size": "80"},
     "not a Whisper feature extractor's config: feature_size must be a whole number >= 1, got '80'"),
    ("preprocessor_config.json", lambda config: [1], "not a JSON object of settings (a list)"),
], ids=["text-for-a-number", "a-list", "llama", "features-text-for-a-number", "features-a-list"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "transformers"])
def test_a_whisper_config_of_the_wrong_type_or_model_is_an_encoder_error_naming_it(tmp_path, file, change, said,
                                                                                  native):
    save_whisper(tmp_path, whole=True)
    config = json.loads((tmp_path / file).read_text())
    (tmp_path / file).write_text(json.dumps(change(config)))
    with pytest.raises(EncoderError) as e:
        load_whisper(str(tmp_path), native=native)
    assert str(e.value).startswith(f"{tmp_path / file}: {said}") and "\n" not in str(e.value), str(e.value)


def perturbed(model: AVSRModel) -> AVSRModel:
    torch.manual_seed(0)
    for m in model.mome:
        torch.nn.init.normal_(m.up_weight, std=0.3)
        torch.nn.init.normal_(m.up_bias, std=0.1)
    return model.eval()


@pytest.mark.parametrize("beam", [1, 3])
def test_mome_decodes_the_same_tokens_on_either_llama(tmp_path, beam):
    """The whole decoder (MoME hooks on the attention, left-padded prefixes, the cache, beams) on llama.py's model
    gives transformers' tokens and log-probabilities."""
    save_llm(tmp_path)
    config = tiny_config(llm=str(tmp_path))
    hf = perturbed(AVSRModel(config, *load_llm(str(tmp_path))))
    ours = perturbed(AVSRModel(config, *load_llm(str(tmp_path), native=True)))
    ours.load_state_dict(hf.state_dict())
    features = random_features()
    options = DecodingOptions(beam_size=beam, max_new_tokens=12)
    expected = decode(hf, features, (4, 2), options=options, static=False)
    got = decode(ours, features, (4, 2), options=options, static=True)  # no static cache here: the same road
    assert [r.tokens for r in got] == [r.tokens for r in expected]
    assert [r.text for r in got] == [r.text for r in expected]
    np.testing.assert_allclose([r.logprob for r in got], [r.logprob for r in expected], rtol=1e-4, atol=1e-4)
    alone = decode(ours, clip(features, 2), (4, 2), options=options)[0]  # padding does not leak into a row
    assert alone.tokens == got[2].tokens


def save_whisper(folder, whole: bool):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    if whole:  # as OpenAI's checkpoints are published: encoder and decoder, keys model.encoder.*
        torch.manual_seed(3)
        model = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER, max_source_positions=400))
        model.save_pretrained(folder)
        reference = build_whisper(TINY_WHISPER, window=8)
        reference.encoder.load_state_dict(model.model.encoder.state_dict())
    else:  # as mome's demo encoder is saved: the encoder alone
        reference = build_whisper(TINY_WHISPER, window=8)
        reference.encoder.save_pretrained(folder)
    reference.feature_extractor.save_pretrained(folder)
    return reference.eval()


@pytest.mark.parametrize("whole", [False, True], ids=["encoder-alone", "whole-model"])
def test_whisper_gives_transformers_features_and_states(tmp_path, whole):
    reference = save_whisper(tmp_path, whole)
    encoder, features = load_whisper_encoder(tmp_path)
    assert isinstance(encoder, WhisperEncoder) and isinstance(features, LogMel) and features.n_samples == 8 * 16000
    assert [n for n, _ in encoder.named_parameters()] == [n for n, _ in reference.encoder.named_parameters()]
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8 * 16000, 3000)]
    expected_mel = reference.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
    torch.testing.assert_close(features(waves), expected_mel, atol=1e-5, rtol=1e-5)
    ours = load_whisper(str(tmp_path), native=True)
    assert isinstance(ours.encoder, WhisperEncoder)
    with torch.no_grad():
        expected, expected_lengths = reference(waves)
        got, lengths = ours([torch.from_numpy(w) for w in waves])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert lengths.tolist() == expected_lengths.tolist() == [50, 400, 10]
    ours.to(torch.bfloat16)  # as on a GPU: the encoder in bf16, its features still float32 and exact
    assert ours.encoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert ours.feature_extractor.filters.dtype == ours.feature_extractor.window.dtype == torch.float32
    torch.testing.assert_close(ours.feature_extractor(waves), expected_mel, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_whisper_on_a_gpu_replays_graphs_that_give_the_eager_states(tmp_path):
    """On CUDA, mome's Whisper encoder in bf16 runs from CUDA graphs (one per batch shape): the eager states, for each
    batch size, again after a replay, and again after the weights moved (the graphs are captured anew)."""
    save_whisper(tmp_path, whole=False)
    ours = load_whisper(str(tmp_path), native=True).to("cuda", torch.bfloat16)
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths] for lengths in
               ((16000, 8 * 16000, 3000), (5000,), (16000, 8 * 16000, 3000))]
    with torch.inference_mode():
        ours.graphs = False
        eager = [ours(b) for b in batches]
        ours.graphs = True
        for _ in range(2):
            for b, (states, lengths) in zip(batches, eager):
                got, got_lengths = ours(b)
                torch.testing.assert_close(got, states, atol=1e-2, rtol=1e-2)  # the same kernels, replayed
                assert torch.equal(got_lengths, lengths)
        assert len(ours._captured.graphs) == 2 and not ours._captured.failed  # batches of 3 and 1
    ours.to(torch.float16)  # the weights move: stale graphs are dropped
    with torch.inference_mode():
        got, _ = ours(batches[1])
        assert got.dtype == torch.float16 and len(ours._captured.graphs) == 1
        ours.graphs = False
        torch.testing.assert_close(got, ours(batches[1])[0], atol=1e-2, rtol=1e-2)


def test_whisper_weights_that_do_not_fit_are_an_encoder_error(tmp_path):
    save_whisper(tmp_path, whole=False)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["layers.1.fc1.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EncoderError, match="layers.1.fc1.weight"):
        load_whisper(str(tmp_path), native=True)


def test_cpu_transcription_with_the_demo_model_imports_no_transformers(tmp_path):
    """What makes a one-file `mome transcribe` fast on a CPU: the demo model loads and transcribes without
    transformers (its modeling import alone costs seconds there), and gives the text transformers' backbones give."""
    script = """
import sys
from mome_cli.preprocess import PreprocessOptions, Preprocessor
from mome_cli.recognizer import load_recognizer
clip = Preprocessor(PreprocessOptions(mode="av", roi=True))("examples/demo.mp4")
recognizer = load_recognizer("demo", device="cpu")
print(recognizer.transcribe(clip).text)
print(type(recognizer.model.llm).__module__, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.splitlines()
    assert out[-1] == "mome_cli.llama False"
    from mome_cli.preprocess import PreprocessOptions, Preprocessor
    from mome_cli.checkpoint import load_weights, read_config
    from mome_cli.recognizer import BUNDLED, build_recognizer

    clip = Preprocessor(PreprocessOptions(mode="av", roi=True))(ROOT / "examples" / "demo.mp4")
    theirs = build_recognizer(read_config(BUNDLED / "demo"), tmp_path, "cpu", name="demo")  # transformers' backbones
    load_weights(theirs.model, BUNDLED / "demo")
    assert not isinstance(theirs.model.llm, LlamaForCausalLM)
    assert theirs.transcribe(clip).text == out[0] != ""


def test_mome_native_0_keeps_transformers_backbones_on_the_cpu(monkeypatch):
    from mome_cli.recognizer import load_recognizer
    from mome_cli.whisper import LogMel

    native = load_recognizer("demo", device="cpu")
    assert isinstance(native.audio_encoder.feature_extractor, LogMel)
    assert native.describe().endswith("; Llama and Whisper on mome's own code (MOME_NATIVE=0: transformers')")
    monkeypatch.setenv("MOME_NATIVE", "0")
    recognizer = load_recognizer("demo", device="cpu")
    assert not isinstance(recognizer.model.llm, LlamaForCausalLM)
    assert not isinstance(recognizer.audio_encoder.encoder, WhisperEncoder)
    assert "mome's own code" not in recognizer.describe() and recognizer.describe().endswith("on cpu, float32")


def test_special_tokens_come_from_special_tokens_map_when_the_config_has_none(tmp_path):
    save_llm(tmp_path)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tokens = {k: settings.pop(k) for k in ("bos_token", "eos_token", "pad_token")}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(NotSupported, match="no BOS or EOS"):  # then transformers' tokenizer is the one to ask
        load_llama(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(tokens))
    _, ours = load_llama(tmp_path)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (256, 257, 258)


def test_a_bf16_llm_keeps_its_rotary_frequencies_in_float32(tmp_path):
    """As from_pretrained(dtype=bf16) leaves them: rounded to bf16 they turn positions by up to ~0.4% (a radian a few
    hundred positions in). transformers' road, and the tiny models cast after they are built, give from_pretrained's
    logits exactly. llama.py's, which fuses operations (RMSNorm, rotary embedding, projections), rounds differently:
    its logits are as far from the float32 ones as from_pretrained's in bf16 (rounded frequencies: 20% farther)."""
    from transformers import AutoModelForCausalLM

    save_llm(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    embeds = torch.randn(2, 300, 64, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(inputs_embeds=embeds).logits
        exact = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(inputs_embeds=embeds.float()).logits
        error = lambda logits: (logits[:, 200:].float() - exact[:, 200:]).abs().mean()  # noqa: E731 (far positions)
        for native in (False, True):
            model, _ = load_llm(str(tmp_path), dtype=torch.bfloat16, native=native)
            assert all(p.dtype == torch.bfloat16 for p in model.parameters())
            assert all(b.dtype == torch.float32 for n, b in model.named_buffers() if "inv_freq" in n)
            got = model(inputs_embeds=embeds).logits
            if native:
                assert error(got) <= 1.05 * error(expected)
            else:
                torch.testing.assert_close(got, expected, atol=0, rtol=0)
    tiny, _ = load_llm("tiny", dtype=torch.bfloat16)
    assert tiny.get_output_embeddings().weight is tiny.get_input_embeddings().weight  # still tied
    assert tiny.model.rotary_emb.inv_freq.dtype == torch.float32


def test_llama3_rope_without_its_original_context_uses_max_position_embeddings(tmp_path):
    """As transformers does (a top-level original_max_position_embeddings would come first)."""
    rope = {k: v for k, v in LLAMA3_ROPE.items() if k != "original_max_position_embeddings"}
    hf, _ = save_llm(tmp_path, rope)
    assert hf.config.rope_parameters["original_max_position_embeddings"] == TINY_SHAPE["max_position_embeddings"]
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]["original_max_position_embeddings"]  # transformers writes the value it took
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_same_prefill(hf, tmp_path)


@pytest.mark.parametrize("extra", [{"quantization_config": {"quant_method": "fp8"}}, {"partial_rotary_factor": 0.5}])
def test_configs_that_change_the_computation_are_left_to_transformers(tmp_path, extra):
    save_llm(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **extra}))
    with pytest.raises(NotSupported):
        load_llama(tmp_path)


def test_special_tokens_map_wins_as_transformers_reads_it(tmp_path):
    """Without added_tokens_decoder in tokenizer_config.json, special_tokens_map.json's tokens come first."""
    save_llm(tmp_path)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "added_tokens_decoder" not in settings
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|finetune_right_pad_id|>"}))
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    _, ours = load_llama(tmp_path)
    assert ours.eos_token_id == theirs.eos_token_id == 258
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "added_tokens_decoder": {}}))
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    _, ours = load_llama(tmp_path)
    assert ours.eos_token_id == theirs.eos_token_id == 257  # the map is not read


@pytest.mark.parametrize("damaged", ["llm/config.json", "llm/tokenizer.json", "llm/tokenizer_config.json",
                                     "audio_encoder/config.json", "audio_encoder/preprocessor_config.json"])
def test_a_damaged_file_of_the_backbones_is_named(tmp_path, damaged):
    """One line naming the file, exit 1 (UnusableModelError), not a parser's message or a traceback."""
    import shutil

    from mome_cli.hub import UnusableModelError
    from mome_cli.recognizer import BUNDLED, load_recognizer

    shutil.copytree(BUNDLED / "demo", tmp_path / "demo")
    (tmp_path / "demo" / damaged).write_text("{oops")
    with pytest.raises(UnusableModelError, match=f"{tmp_path / 'demo' / damaged}: unreadable"):
        load_recognizer(str(tmp_path / "demo"), device="cpu", home=tmp_path / "home")


@pytest.mark.parametrize("lost", ["llm/tokenizer.json", "llm/model.safetensors", "audio_encoder/model.safetensors",
                                  "audio_encoder/preprocessor_config.json"])
def test_a_file_missing_from_the_backbones_is_one_line_naming_their_folder(tmp_path, lost):
    """mome's own code leaves such a folder to transformers, whose errors (an OSError, a ValueError over several
    lines) came out as tracebacks, in `mome train` (build_recognizer) as in transcribe."""
    import shutil

    from mome_cli.checkpoint import read_config
    from mome_cli.hub import UnusableModelError
    from mome_cli.recognizer import BUNDLED, build_recognizer, load_recognizer

    shutil.copytree(BUNDLED / "demo", tmp_path / "demo")
    (tmp_path / "demo" / lost).unlink()
    said = f"^{tmp_path / 'demo' / Path(lost).parent}: [^\n]+$"
    with pytest.raises(UnusableModelError, match=said):
        load_recognizer(str(tmp_path / "demo"), device="cpu", home=tmp_path / "home")
    with pytest.raises(UnusableModelError, match=said):
        build_recognizer(read_config(tmp_path / "demo"), tmp_path / "home", "cpu")


def matmuls(model, **inputs) -> tuple[int, torch.Tensor]:
    """(matrix products the forward ran, its logits)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.__name__.split(".")[0] in ("mm", "addmm", "bmm")
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        logits = model(**inputs).logits
    return Count.n, logits


def test_fused_projections_are_the_parameters_and_stay_current(tmp_path):
    """q/k/v and gate/up run as one matmul each on views of one tensor: the same parameters (names, values, no extra
    memory). A cast or move, or weights loaded with assign=True, fuse them again; weights replaced behind the
    module's back (param.data = ...) send the layers back to one matmul each. The logits are the same every way."""
    hf, _ = save_llm(tmp_path)
    ours, _ = load_llm(str(tmp_path), native=True)
    attn, mlp = ours.model.layers[0].self_attn, ours.model.layers[0].mlp
    assert attn.k_proj.weight.data_ptr() == attn.qkv[attn.q_proj.weight.shape[0]:].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == mlp.gate_up[mlp.gate_proj.weight.shape[0]:].data_ptr()
    for (name, ours_p), (hf_name, hf_p) in zip(ours.named_parameters(), hf.named_parameters()):
        assert name == hf_name and torch.equal(ours_p, hf_p)
    embeds, mask, positions = left_padded()
    inputs = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    with torch.no_grad():
        expected = hf(**inputs).logits[mask.bool()]
    layers = len(ours.model.layers)
    fused_count, fused_logits = matmuls(ours, **inputs)
    assert fused_count == 4 * layers + 1  # qkv, o, gate_up, down per layer; the LM head
    ours.to(torch.float64)  # new storage for every parameter: fused again
    assert attn.qkv.dtype == torch.float64 and attn.q_proj.weight.data_ptr() == attn.qkv.data_ptr()
    cast_count, cast_logits = matmuls(ours, **{**inputs, "inputs_embeds": embeds.double()})
    assert cast_count == 4 * layers + 1
    ours.load_state_dict({n: t.clone() for n, t in ours.state_dict().items()}, assign=True)  # fused again
    assert attn.q_proj.weight.data_ptr() == attn.qkv.data_ptr()
    for p in ours.parameters():
        p.data = p.data.clone()  # behind the module's back: the fused tensors are stale, and not used
    plain_count, plain_logits = matmuls(ours, **{**inputs, "inputs_embeds": embeds.double()})
    assert plain_count == 7 * layers + 1
    for logits in (fused_logits, cast_logits, plain_logits):
        torch.testing.assert_close(logits[mask.bool()].float(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_on_a_gpu_decodes_as_transformers_with_its_graph(tmp_path, dtype):
    """On a GPU, llama.py's model: the captured decoding step (static cache, CUDA graph) gives the eager tokens, and
    in float32 transformers' tokens; in bf16 (where rounding differs) transformers' log-probabilities closely."""
    save_llm(tmp_path)
    config = tiny_config(llm=str(tmp_path))
    hf = perturbed(AVSRModel(config, *load_llm(str(tmp_path), dtype=dtype, device="cuda")).cuda())
    ours = perturbed(AVSRModel(config, *load_llm(str(tmp_path), dtype=dtype, device="cuda", native=True)).cuda())
    ours.load_state_dict(hf.state_dict())
    assert ours.llm.model.layers[0].self_attn.qkv.is_cuda  # fused where it runs
    features = random_features((50, 37, 21))
    features = type(features)(**{k: v.cuda() for k, v in vars(features).items()})
    options = DecodingOptions(max_new_tokens=30)
    graphs = [decode(ours, features, (4, 2), options=options) for _ in range(2)]  # capture, then replay only
    assert ours._static_greedy.graph is not None
    eager = decode(ours, features, (4, 2), options=DecodingOptions(max_new_tokens=30, cuda_graphs=False), static=True)
    assert [r.tokens for r in graphs[0]] == [r.tokens for r in graphs[1]] == [r.tokens for r in eager]
    expected = decode(hf, features, (4, 2), options=options, static=False)
    if dtype == torch.float32:
        assert [r.tokens for r in graphs[0]] == [r.tokens for r in expected]
    same = [(got, want) for got, want in zip(graphs[0], expected) if got.tokens == want.tokens]
    assert same  # all of them in float32 (above); in bf16 a near tie may go the other way in a row
    for got, want in same:
        assert got.logprob == pytest.approx(want.logprob, abs=0.25 if dtype == torch.bfloat16 else 1e-3)  # 30 tokens


def test_a_static_cache_runner_gives_a_fresh_runner_tokens_for_any_prefix_length(tmp_path):
    """A runner serves batch after batch: a prefix of one position must not write where the last run stopped."""
    from mome_cli.decoding import StaticGreedy
    from mome_cli.model import Prefix

    save_llm(tmp_path)
    ours, _ = load_llm(str(tmp_path), native=True)
    g = torch.Generator().manual_seed(0)

    def prefix(L):
        return Prefix(embeds=torch.randn(2, L, 64, generator=g), attention_mask=torch.ones(2, L, dtype=torch.long),
                      position_ids=torch.arange(L).expand(2, L))

    first, second = prefix(5), prefix(1)
    with torch.inference_mode():
        runner = StaticGreedy(ours, batch=2, cache_len=32, max_new_tokens=8, eos=10**6, graphs=False)
        runner.run(first, 8)
        reused = runner.run(second, 8)
        fresh = StaticGreedy(ours, batch=2, cache_len=32, max_new_tokens=8, eos=10**6, graphs=False).run(second, 8)
    assert reused == fresh


@pytest.fixture
def llama_kernels(monkeypatch):
    """llama_kernels, its kernels taking tensors on the CPU too (through Triton's interpreter, conftest) or a GPU."""
    pytest.importorskip("triton")
    from mome_cli import llama_kernels

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU, and Triton's interpreter is off")
    monkeypatch.setattr(llama_kernels, "DEVICES", ("cuda", "cpu"))
    return llama_kernels


def within_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to float32 order of operations, or to two bf16 steps of the largest value (Triton's interpreter cuts
    bf16 where a GPU rounds to nearest, and the rotary embedding's two terms may cancel)."""
    step = 2.0 ** -6 if got.dtype == torch.bfloat16 else 2.0 ** -20
    assert (got.float() - want.float()).abs().max() <= step * want.float().abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_decoding_kernels_give_pytorchs_numbers(llama_kernels, dtype):
    from mome_cli.llama import attend, rotate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    B, N, K, S, slot = 3, 8, 2, 10, 4
    for rows, d in ((B, 16), (1, 16), (B, 48)):  # an angle per row, or one position for every row; d = 48 (the demo)
        qkv = torch.randn(B, 1, N + 2 * K, d, generator=g).to(dtype)
        angle = torch.randn(rows, 1, 1, d // 2, generator=g)
        cos = torch.cat((angle.cos(), angle.cos()), -1).to(dtype)
        sin = torch.cat((-angle.sin(), angle.sin()), -1).to(dtype)
        keys, values = torch.zeros(2, B, K, S, d, dtype=dtype, device=device)
        q = llama_kernels.rope_cache(*(t.to(device) for t in (qkv, cos, sin, keys, values, torch.tensor([slot]))), N)
        want = rotate(qkv[:, :, : N + K], cos, sin)  # (B, 1, N+K, d)
        within_rounding(q.cpu(), want[:, :, :N].transpose(1, 2))
        within_rounding(keys[:, :, slot].cpu(), want[:, 0, N:])
        assert torch.equal(values[:, :, slot].cpu(), qkv[:, 0, N + K :])
        others = [s for s in range(S) if s != slot]
        assert not keys[:, :, others].any() and not values[:, :, others].any()  # only the slot is written
        llama_kernels.rope_cache(*(t.to(device) for t in (qkv, cos, sin, keys, values, torch.tensor([S]))), N)
        assert not keys[:, :, others].any() and not values[:, :, others].any()  # a slot past the cache: no write
    for B, N, K, d, S, rows in ((2, 8, 2, 16, 70, 2), (1, 4, 4, 48, 33, 1), (3, 6, 2, 64, 100, 1)):  # G = 4, 1, 3
        q, keys, values = (torch.randn(B, heads, length, d, generator=g).to(dtype)
                           for heads, length in ((N, 1), (K, S), (K, S)))
        allowed = torch.rand(rows, 1, 1, S, generator=g) < 0.7  # a mask for each row, or one for all
        bias = torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)
        got = llama_kernels.attend(*(t.to(device) for t in (q, keys, values, bias))).cpu()
        want = attend(q, keys, values, bias)  # SDPA
        assert (got.float() - want.float()).abs().max() <= (1e-6 if dtype == torch.float32 else 2.0 ** -7)
        hidden = bias.clone()
        hidden[..., 1:] = float("-inf")  # -inf, as additive masks often say it: whole blocks of slots hidden
        got = llama_kernels.attend(*(t.to(device) for t in (q, keys, values, hidden))).cpu()
        assert not got.isnan().any()
        assert (got.float() - attend(q, keys, values, hidden).float()).abs().max() <= 2.0 ** -7
    gate_up = torch.randn(B, 1, 2 * 1500, generator=g).to(dtype)  # F = 1500: two column blocks, the last partial
    gate, up = gate_up.chunk(2, dim=-1)
    within_rounding(llama_kernels.silu_mul(gate_up.to(device)).cpu(), torch.nn.functional.silu(gate) * up)
    h, delta = torch.randn(2, B, 1, 48, generator=g).to(dtype)
    weight = torch.randn(48, generator=g).to(dtype)
    total, norm = llama_kernels.add_rms_norm(h.to(device), delta.to(device), weight.to(device), 1e-6)
    within_rounding(total.cpu(), h + delta)
    within_rounding(norm.cpu(), torch.nn.functional.rms_norm(h + delta, (48,), weight, 1e-6))


def test_llama_decoding_steps_through_the_kernels_give_the_same_tokens(tmp_path, llama_kernels, monkeypatch):
    """The decoder on the static cache, its steps through the three kernels: the tokens and log-probabilities of
    PyTorch's operations (MOME_KERNELS=0), and the kernels did run."""
    save_llm(tmp_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the kernels run (on a CPU: the interpreter)
    model = perturbed(AVSRModel(tiny_config(llm=str(tmp_path)), *load_llm(str(tmp_path), native=True))).to(device)
    features = random_features()
    features = type(features)(**{k: v.to(device) for k, v in vars(features).items()})
    options = DecodingOptions(max_new_tokens=8, cuda_graphs=False)
    monkeypatch.setenv("MOME_KERNELS", "0")
    without = decode(model, features, (4, 2), options=options, static=True)
    monkeypatch.delenv("MOME_KERNELS")
    calls = []
    for name in ("rope_cache", "attend", "silu_mul", "add_rms_norm"):
        kernel = getattr(llama_kernels, name)
        monkeypatch.setattr(llama_kernels, name, lambda *a, kernel=kernel, name=name: calls.append(name) or kernel(*a))
    model._static_greedy = None
    got = decode(model, features, (4, 2), options=options, static=True)
    layers = model.llm.config.num_hidden_layers
    assert all(calls.count(name) == 7 * layers for name in ("rope_cache", "attend", "silu_mul", "add_rms_norm"))
    assert [r.tokens for r in got] == [r.tokens for r in without]
    np.testing.assert_allclose([r.logprob for r in got], [r.logprob for r in without], rtol=1e-4, atol=1e-4)


def test_llama_kernels_that_fail_give_way_to_pytorch_once(tmp_path, monkeypatch):
    """A GPU or Triton build the kernels do not run on: one warning, then PyTorch's operations, the same logits."""
    from mome_cli import llama_kernels
    from mome_cli.llama import StaticKVCache

    save_llm(tmp_path)
    llm, _ = load_llm(str(tmp_path), native=True)
    embeds, mask, positions = left_padded(B=2, L=5)

    def step():  # a prefill, then one position through the static cache
        cache = StaticKVCache(llm.config, 2, 8, torch.float32, "cpu")
        allowed = torch.ones(2, 1, 5, 8, dtype=torch.bool).tril()
        llm(inputs_embeds=embeds, attention_mask=allowed, position_ids=positions, past_key_values=cache, use_cache=True)
        cache.slot.fill_(5)
        return llm(inputs_embeds=embeds[:, -1:], attention_mask=torch.ones(2, 1, 1, 8, dtype=torch.bool).tril(5),
                   position_ids=positions[:, -1:] + 1, past_key_values=cache, use_cache=True).logits

    with torch.inference_mode():
        want = step()
        monkeypatch.setattr(llama_kernels, "DEVICES", ("cpu",))
        monkeypatch.setattr(llama_kernels, "_kernels", (None, None, None))  # as if Triton were there

        def broken(*args):
            raise RuntimeError("no kernel image for this GPU")

        for name in ("rope_cache", "attend", "silu_mul", "add_rms_norm"):
            monkeypatch.setattr(llama_kernels, name, broken)
        with pytest.warns(RuntimeWarning, match="no kernel image"):
            torch.testing.assert_close(step(), want)
        assert llama_kernels._kernels is False
        torch.testing.assert_close(step(), want)  # no second warning (pytest would show it)
