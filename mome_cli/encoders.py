"""Frozen encoders: Whisper for audio (50 Hz), AV-HuBERT for lips (25 Hz).

The audio encoder is the encoder half of a transformers Whisper checkpoint (default openai/whisper-medium.en), loaded
without its decoder. Whisper always encodes 30 s (its feature extractor pads to that); only the frames that cover the
real audio are kept: ceil(samples / 320), 50 per second. Longer audio is the media stage's job (it cuts segments of at
most 20 s), so more than 30 s here is an error.

The video encoder is AV-HuBERT Large (avhubert.py), fed 88x88 normalised mouth crops at 25 fps, one output per frame.

Both come as `tiny` too: random, seeded, built here from a config, for tests and smoke runs.

Notation for shapes: B clips, S samples, T frames, D encoder width.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .configuration import TINY_WIDTH
from .llama import NotSupported
from .rng import seeded
from .whisper import LogMel, WhisperEncoder as NativeWhisperEncoder

SAMPLE_RATE = 16_000  # Hz, what Whisper and the media stage use
HOP_LENGTH = 160  # samples per mel frame: 100 mel frames a second
AUDIO_FRAME_RATE = 50  # Whisper encoder outputs per second: its second conv has stride 2
SAMPLES_PER_AUDIO_FRAME = SAMPLE_RATE // AUDIO_FRAME_RATE  # 320
MAX_AUDIO_SECONDS = 30  # Whisper's fixed window
VIDEO_FRAME_RATE = 25  # AV-HuBERT: one output per video frame

TINY_SEED = 0
# The demo model's audio encoder (trained on the synthetic corpus by pretrain.py): 8 s window, 400 positions.
DEMO_WHISPER = dict(d_model=128, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_dim=512, decoder_layers=1,
                    decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=64, pad_token_id=0,
                    bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
DEMO_WINDOW = 8  # seconds
TINY_WHISPER = dict(d_model=TINY_WIDTH, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                    decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=64,
                    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


class EncoderError(Exception):
    """An input an encoder cannot take, or encoder weights that do not fit."""


class CapturedForward:
    """A frozen module's forward on CUDA, replayed from CUDA graphs: one per input shape (the `limit` latest kept),
    captured at its first call. For Whisper's encoder, whose input is always a 30 s window: its few hundred kernels,
    launched one by one from Python, take several times their GPU time (benchmarks/RESULTS.md, issue #8), and a graph
    launches them at once. Each call copies its input into the graph's, replays, and returns a copy of the output (the
    next replay overwrites the graph's). Moving or replacing the weights (.to(), load_state_dict with assign) makes
    the graphs stale: they are captured again. A capture that fails is said once, and the module runs eagerly from
    then on."""

    def __init__(self, module: nn.Module, limit: int = 2):
        self.module, self.limit = module, limit
        self.graphs: dict = {}  # (shape, dtype, device, inference mode) -> (graph, input, output), oldest first
        self.weights: tuple = ()  # the weights' addresses when the graphs were captured
        self.pool = None  # one memory pool for this module's graphs: they replay one at a time
        self.stream = None  # the stream they are warmed up and captured on
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.module(x)
        weights = tuple(p.data_ptr() for p in self.module.parameters())
        if weights != self.weights:
            self.graphs, self.weights = {}, weights
        # inference mode too: a graph captured in it holds inference tensors, which no_grad code may not write into
        key = (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled())
        if key not in self.graphs:
            if len(self.graphs) >= self.limit:
                self.graphs.pop(next(iter(self.graphs)))
            try:
                self.graphs[key] = self._capture(x)
            except RuntimeError as e:  # an operation a graph cannot hold
                self.failed = True
                warnings.warn(f"CUDA graphs unavailable for {type(self.module).__name__} ({str(e)[:200]}); running "
                              "it eagerly", RuntimeWarning, stacklevel=2)
                return self.module(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple:
        static_in = x.clone()
        # A first run on the stream the capture uses: cuBLAS, cuDNN (whose workspaces are per stream) and the
        # allocator settle there before capture, where making a workspace is not allowed.
        self.stream = self.stream or torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.module(static_in)
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            static_out = self.module(static_in)
        torch.cuda.current_stream().wait_stream(self.stream)
        return graph, static_in, static_out


class WhisperAudioEncoder(nn.Module):
    """16 kHz waveforms -> (B, T, D) Whisper encoder states at 50 Hz, trimmed to the real audio. On CUDA, for
    inference in bf16 or fp16, mome's own encoder (whisper.py) runs from CUDA graphs (CapturedForward); `graphs =
    False` turns them off (training does)."""

    def __init__(self, encoder: nn.Module, feature_extractor):
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.feature_extractor = feature_extractor
        self.graphs = True
        self._captured = None  # CapturedForward of the encoder, made on first use

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @property
    def max_seconds(self) -> float:
        """The encoder's fixed window: 30 s for OpenAI's checkpoints, shorter for the small demo encoder."""
        return self.feature_extractor.n_samples / SAMPLE_RATE

    def forward(self, waveforms: list) -> tuple[torch.Tensor, torch.Tensor]:
        """waveforms: B 1-D float arrays or tensors at 16 kHz -> (B, T, D) states, (B,) real frames (on the host)."""
        samples = [int(len(w)) for w in waveforms]
        longest = max(samples)
        if longest > self.feature_extractor.n_samples:
            raise EncoderError(f"audio of {longest / SAMPLE_RATE:.1f} s is longer than this Whisper encoder's "
                               f"{self.max_seconds:g} s window: cut it into segments first")
        param = next(self.encoder.parameters())
        if isinstance(self.feature_extractor, LogMel):  # mome's own (whisper.py): a tensor in, a tensor out
            mel = self.feature_extractor(waveforms)
        else:
            arrays = [w.detach().float().cpu().numpy() if torch.is_tensor(w) else w for w in waveforms]
            device = str(param.device) if param.device.type == "cuda" else "cpu"  # the STFT runs on the encoder's GPU
            mel = self.feature_extractor(arrays, sampling_rate=SAMPLE_RATE, return_tensors="pt", device=device)
            mel = mel.input_features
        mel = mel.to(device=param.device, dtype=param.dtype)  # (B, n_mels, 100 x window) = (B, 80, 3000) for 30 s
        native = isinstance(self.encoder, NativeWhisperEncoder)
        half = mel.dtype in (torch.bfloat16, torch.float16)  # what a GPU runs (and what was measured: RESULTS.md)
        if self.graphs and native and half and mel.is_cuda and not torch.is_grad_enabled():
            self._captured = self._captured or CapturedForward(self.encoder)
            states = self._captured(mel)  # (B, 50 x window, D)
        else:
            states = self.encoder(mel)
            states = states if torch.is_tensor(states) else states.last_hidden_state
        lengths = torch.tensor([max(1, math.ceil(s / SAMPLES_PER_AUDIO_FRAME)) for s in samples])
        return states[:, : int(lengths.max())], lengths  # (B,) on the host: read later without waiting for the GPU


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' loading report (the Whisper decoder's keys are left out on purpose) and its bar."""
    from transformers.utils import logging

    from .llm import no_progress_bars

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with no_progress_bars():
            yield
    finally:
        logging.set_verbosity(level)


def build_whisper(shape: dict, seed: int = TINY_SEED, window: int = MAX_AUDIO_SECONDS) -> WhisperAudioEncoder:
    """A random Whisper encoder of a shape, drawn from seed, with the real feature extractor (80 mel bins) padding
    to `window` seconds (the encoder's positions are sized to match)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(**shape, max_source_positions=window * AUDIO_FRAME_RATE)
    with seeded(seed):
        encoder = WhisperEncoder(config)
    return WhisperAudioEncoder(encoder, WhisperFeatureExtractor(feature_size=80, chunk_length=window))


def build_tiny_whisper() -> WhisperAudioEncoder:
    """A tiny random Whisper encoder with the real feature extractor (80 mel bins), the same on every machine."""
    return build_whisper(TINY_WHISPER)


def load_whisper(name: str, revision: str | None = None, dtype: torch.dtype | None = None,
                 device: str = "cpu", native: bool = False) -> WhisperAudioEncoder:
    """The encoder of a Whisper checkpoint (hub id or local folder), or `tiny`; frozen, in eval mode.

    native: a local folder runs on mome's own encoder and features (whisper.py), which need no transformers import;
    transformers' are used when whisper.py does not run the checkpoint.
    """
    model = None
    if native and name != "tiny" and Path(name).is_dir():
        from .whisper import load_whisper_encoder

        try:
            model = WhisperAudioEncoder(*load_whisper_encoder(name))
        except NotSupported:
            pass
        except ValueError as e:
            raise EncoderError(str(e)) from e
    if model is None and name == "tiny":
        model = build_tiny_whisper()
    elif model is None:
        from transformers import WhisperFeatureExtractor
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from .llm import unreadable_as
        from .whisper import check_whisper_folder

        source = os.fspath(name)
        try:
            check_whisper_folder(source)
        except ValueError as e:
            raise EncoderError(str(e)) from e
        with unreadable_as(EncoderError, source), quiet_transformers():
            feature_extractor = WhisperFeatureExtractor.from_pretrained(source, revision=revision)
            encoder, info = WhisperEncoder.from_pretrained(
                source, revision=revision, key_mapping={r"^model\.encoder\.": ""}, output_loading_info=True
            )
        if info["missing_keys"]:
            raise EncoderError(f"{name}: not a Whisper checkpoint, encoder weights missing: "
                               f"{sorted(info['missing_keys'])[:5]}")
        model = WhisperAudioEncoder(encoder, feature_extractor)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return model.to(device=device, dtype=dtype)


__all__ = ["SAMPLE_RATE", "AUDIO_FRAME_RATE", "VIDEO_FRAME_RATE", "MAX_AUDIO_SECONDS", "EncoderError",
           "WhisperAudioEncoder", "build_whisper", "build_tiny_whisper", "load_whisper"]
