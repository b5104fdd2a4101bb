"""The Whisper audio encoder: 50 Hz output trimmed to the real audio, loading a checkpoint without its decoder."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mome_cli.encoders import SAMPLE_RATE, EncoderError, build_tiny_whisper, load_whisper


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_output_is_50_frames_a_second_of_real_audio():
    encoder = build_tiny_whisper()
    with torch.no_grad():
        states, lengths = encoder([tone(1.0), tone(2.51), tone(0.01)])
    assert lengths.tolist() == [50, 126, 1]  # ceil(samples / 320)
    assert states.shape == (3, 126, encoder.dim)


def test_a_clip_encodes_the_same_alone_and_in_a_batch():
    encoder = build_tiny_whisper()
    a, b = tone(1.0), tone(2.0, hz=440)
    with torch.no_grad():
        batched, _ = encoder([a, b])
        alone, n = encoder([a])
    torch.testing.assert_close(batched[0, : n[0]], alone[0], rtol=1e-5, atol=1e-5)


def test_audio_longer_than_whisper_window_is_refused():
    with pytest.raises(EncoderError, match="longer than this Whisper encoder's 30 s window"):
        build_tiny_whisper()([tone(30.5)])


def test_a_shorter_window_sizes_the_encoder_and_its_limit():
    from mome_cli.encoders import DEMO_WHISPER, DEMO_WINDOW, build_whisper

    encoder = build_whisper(DEMO_WHISPER, window=DEMO_WINDOW)
    assert encoder.max_seconds == DEMO_WINDOW == 8
    states, lengths = encoder([tone(3.0), tone(8.0)])
    assert states.shape == (2, 400, 128) and lengths.tolist() == [150, 400]
    with pytest.raises(EncoderError, match="8 s window"):
        encoder([tone(8.1)])


def save_tiny_whisper_checkpoint(folder):
    """A full WhisperForConditionalGeneration (encoder + decoder) and its feature extractor, as on the hub."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from mome_cli.encoders import TINY_WHISPER

    torch.manual_seed(3)
    full = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER))
    full.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return full


def test_loads_the_encoder_half_of_a_saved_checkpoint(tmp_path):
    full = save_tiny_whisper_checkpoint(tmp_path)
    encoder = load_whisper(str(tmp_path))
    for name, p in full.model.encoder.state_dict().items():
        assert torch.equal(encoder.encoder.state_dict()[name], p), name
    assert not any(p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        mel = encoder.feature_extractor([tone(1.0)], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        expected = full.model.encoder(mel).last_hidden_state[:, :50]
        got, _ = encoder([tone(1.0)])
    torch.testing.assert_close(got, expected)


def test_a_checkpoint_without_encoder_weights_is_refused(tmp_path):
    save_tiny_whisper_checkpoint(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.encoder.layers.1.fc1.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EncoderError, match="layers.1.fc1.weight"):
        load_whisper(str(tmp_path))


def test_loading_backbones_draws_no_progress_bar(tmp_path, capfd):
    """transformers' "Loading weights" bar is hidden for both backbones (a CLI's stderr is for progress on long work
    and for errors); the bar is on again afterwards for the caller's own loads."""
    from transformers.utils import logging

    from mome_cli.llm import build_tiny_llm, load_llm

    save_tiny_whisper_checkpoint(tmp_path / "whisper")
    llm, tokenizer = build_tiny_llm()
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    capfd.readouterr()
    load_whisper(str(tmp_path / "whisper"))
    load_llm(str(tmp_path / "llm"))
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()


class _ReplayedGraph:
    """Stands in for a CUDA graph on the CPU: replay() runs the module on the captured input into the output."""

    def __init__(self, module, static_in, static_out):
        self.module, self.static_in, self.static_out = module, static_in, static_out
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.static_out.copy_(self.module(self.static_in))


def test_captured_forward_replays_one_graph_per_shape_and_captures_anew_when_weights_move(monkeypatch):
    from mome_cli.encoders import CapturedForward

    module = torch.nn.Linear(4, 3)
    captured = CapturedForward(module, limit=2)
    captures = []

    def capture(x):
        static_in = x.clone()
        graph = _ReplayedGraph(module, static_in, module(static_in))
        captures.append(tuple(x.shape))
        return graph, static_in, graph.static_out

    monkeypatch.setattr(captured, "_capture", capture)
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(n, 4, generator=g) for n in (2, 5, 7))
    with torch.no_grad():
        first = captured(a)
        torch.testing.assert_close(first, module(a))
        torch.testing.assert_close(captured(a * 2), module(a * 2))  # the same graph, a new input copied in
        captured(b)
        assert captures == [(2, 4), (5, 4)]
        torch.testing.assert_close(first, module(a))  # a copy: the next replay does not overwrite what was returned
        captured(c)  # a third shape: the oldest graph goes (limit 2)
        assert [key[0] for key in captured.graphs] == [(5, 4), (7, 4)]
        module.weight = torch.nn.Parameter(module.weight * 3)  # replaced weights: every graph is stale
        torch.testing.assert_close(captured(b), module(b))
        assert captures[-1] == (5, 4) and len(captured.graphs) == 1
    with torch.inference_mode():  # a graph captured in inference mode holds inference tensors
        torch.testing.assert_close(captured(b), module(b))
    with torch.no_grad():  # which no_grad code may not write into: it gets a graph of its own
        torch.testing.assert_close(captured(b), module(b))
    assert captures[-2:] == [(5, 4), (5, 4)]


def test_captured_forward_that_cannot_capture_runs_eagerly_after_one_warning(monkeypatch):
    from mome_cli.encoders import CapturedForward

    module = torch.nn.Linear(4, 3)
    captured = CapturedForward(module)

    def broken(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(captured, "_capture", broken)
    x = torch.randn(2, 4)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="not permitted"):
        torch.testing.assert_close(captured(x), module(x))
    with torch.no_grad():
        torch.testing.assert_close(captured(x), module(x))  # no second warning (pytest would show it)
    assert captured.failed and not captured.graphs
