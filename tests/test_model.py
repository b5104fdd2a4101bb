"""The assembled model: config, sequence layout, the batched multi-rate loss, overfitting, parameter accounting."""

import pytest
import torch

from mome_cli.decoding import DecodingOptions, decode
from mome_cli.llm import build_on_meta, byte_tokenizer
from mome_cli.model import IGNORE_INDEX, AVSRModel, ModelConfig, check_rate
from mome_cli.mome import MoMEConfig

from conftest import random_features, tiny_config, tiny_model


def test_config_round_trips_and_validates():
    config = tiny_config(rates=[(4, 2), (16, 5)], compression="stack", modes=["a", "av"])
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.mome, MoMEConfig)
    assert again.rates_for("a") == [(4, None), (16, None)] and again.rates_for("v") == [(None, 2), (None, 5)]
    with pytest.raises(ValueError, match="duplicate"):
        ModelConfig(rates=[(4, 2), (4, 2)])
    with pytest.raises(ValueError, match="compression"):
        ModelConfig(compression="conv")
    with pytest.raises(ValueError, match="unknown model config field"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="does not fit mode"):
        check_rate((4, 2), "a")


def test_layout_tags_tokens_prompt_and_labels(model):
    features = random_features((50,))
    target = model.encode_targets(["hi there"])
    (embeds, labels), = model.layout(features, (4, 2), "av", target)
    ids = lambda s: model.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    table = model.llm.get_input_embeddings()
    audio, _ = model.audio(features.audio, features.audio_lengths, 4)
    video, _ = model.video(features.video, features.video_lengths, 2)
    expected = torch.cat([
        table(torch.tensor([model.tokenizer.bos_token_id] + ids("<audio>"))), audio[0],
        table(torch.tensor(ids("</audio>") + ids("<video>"))), video[0],
        table(torch.tensor(ids("</video>") + ids("Transcribe speech and video to text.") + target[0])),
    ])
    assert audio.shape[1] == 13 and video.shape[1] == 13  # ceil(50 / 4), ceil(25 / 2)
    torch.testing.assert_close(embeds, expected)
    n_target = len(ids("hi there")) + 1
    assert labels[-n_target:].tolist() == ids("hi there") + [model.tokenizer.eos_token_id]
    assert (labels[:-n_target] == IGNORE_INDEX).all()


def test_layout_of_single_modalities_uses_their_prompts(model):
    features = random_features((40,))
    ids = lambda s: model.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    (a_row, _), = model.layout(features, (16, None), "a")
    (v_row, _), = model.layout(features, (None, 5), "v")
    assert a_row.shape[0] == 1 + len(ids("<audio></audio>Transcribe speech to text.")) + 3
    assert v_row.shape[0] == 1 + len(ids("<video></video>Transcribe video to text.")) + 4


def test_a_decoding_prefix_from_encoder_lengths_on_the_host_reads_nothing_back_from_the_device(model):
    """The recognizer's encoders leave the lengths on the host; then building the prefix (compression, layout,
    padding) never reads a device value, which on a GPU waits for the encoders. On the meta device, which holds
    shapes and no values, any such read raises."""
    host = random_features((50, 21))
    expected = model.prefix(host, (4, 2), "av")
    on_meta = type(host)(host.audio.to("meta"), host.audio_lengths, host.video.to("meta"), host.video_lengths)
    prefix = model.to("meta").prefix(on_meta, (4, 2), "av")
    assert prefix.embeds.device.type == "meta" and prefix.embeds.shape == expected.embeds.shape
    assert prefix.attention_mask.device.type == "meta"


def test_training_rows_right_padded_decoding_prefixes_left_padded(model):
    features = random_features((50, 21))
    rows = model.layout(features, (4, 2), "av", model.encode_targets(["a", "b"]))
    _, labels, mask, positions = model._pad(rows, "right")
    lengths = [r[0].shape[0] for r in rows]
    assert mask.sum(-1).tolist() == lengths and mask[1, : lengths[1]].all() and not mask[1, lengths[1]:].any()
    assert (labels[1, lengths[1]:] == IGNORE_INDEX).all()
    prefix = model.prefix(features, (4, 2))
    m = prefix.attention_mask
    short = m.shape[1] - int(m[1].sum())
    assert short > 0 and not m[1, :short].any() and m[1, short:].all()
    assert prefix.position_ids[1, short:].tolist() == list(range(m.shape[1] - short))


def test_all_rates_go_through_the_llm_in_one_forward(model):
    calls = []
    handle = model.llm.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    model(random_features(), ["x", "y", "z"])
    handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("position", ["mhsa", "ffn", "layer"])
def test_batched_multi_rate_loss_equals_sequential_per_rate_losses(position):
    model = tiny_model(mome=dict(position=position))
    features, texts = random_features((50, 37, 21)), ["one two", "three", "four five six"]
    joint = model(features, texts)
    single = [model(features, texts, rates=[r]) for r in model.config.rates]
    for r, out in zip(model.config.rates, single):
        torch.testing.assert_close(joint.rate_losses[r], out.lm_loss.detach(), rtol=0, atol=1e-5)
    mean = lambda xs: torch.stack(xs).mean()  # noqa: E731
    torch.testing.assert_close(joint.lm_loss, mean([o.lm_loss for o in single]), rtol=0, atol=1e-5)
    torch.testing.assert_close(joint.lb_loss, mean([o.lb_loss for o in single]), rtol=0, atol=1e-5)
    torch.testing.assert_close(joint.loss, mean([o.loss for o in single]), rtol=0, atol=1e-5)


def test_overfits_eight_pairs_at_every_rate_from_one_set_of_weights():
    """A tiny model learns 8 (random audio, random video) -> text pairs; greedy decoding returns each exactly."""
    model = tiny_model(perturb=False, projector_hidden=64, mome=dict(bottleneck=16))
    texts = ["red fox", "blue sky", "green tea", "big dog", "hot sun", "cold rain", "old map", "new car"]
    g = torch.Generator().manual_seed(1)
    features = random_features(torch.randint(30, 60, (8,), generator=g).tolist(), seed=1)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    options = DecodingOptions(max_new_tokens=12)

    def correct():
        model.eval()
        out = {r: [d.text for d in decode(model, features, r, options=options)] for r in model.config.rates}
        model.train()
        return out

    for step in range(300):
        optimiser.zero_grad()
        model(features, texts).loss.backward()
        optimiser.step()
        if step % 25 == 24 and all(h == texts for h in correct().values()):
            break
    assert correct() == {r: texts for r in model.config.rates}


def test_parameter_counts_of_a_tiny_model(model):
    counts = model.parameter_counts((16, 5))
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["trainable"] == counts["mome"] + counts["projectors"]
    H, cfg = 64, model.config.mome
    expert = 2 * H * cfg.bottleneck + cfg.bottleneck + H
    assert counts["mome_active"] == 2 * (H * cfg.num_routed + (cfg.num_shared + cfg.top_k) * expert)
    assert counts["projectors_active"] == sum(
        p.numel() for p in [*model.audio.projectors["16"].parameters(), *model.video.projectors["5"].parameters()])


@pytest.mark.parametrize("llm, layers, width", [("meta-llama/Llama-3.2-1B", 16, 2048),
                                                ("meta-llama/Llama-3.2-3B", 28, 3072)])
def test_parameter_counts_of_real_backbones_on_meta(llm, layers, width):
    """MoME-23/4, bottleneck 12: active MoME parameters = layers x (router + (1 shared + 4 routed) experts)."""
    with torch.device("meta"):
        model = AVSRModel(ModelConfig(llm=llm), build_on_meta(llm), byte_tokenizer())
    counts = model.parameter_counts()
    expected = layers * (width * 23 + 5 * (2 * width * 12 + 12 + width))
    assert counts["mome_active"] == expected
    projector = 1024 * 2048 + 2048 + 2048 * width + width
    assert counts["projectors_active"] == 2 * projector and counts["projectors"] == 4 * projector
