"""Whisper's encoder and log-mel features in plain PyTorch: the same weights and numbers as transformers', without
its import (see llama.py for why: on a CPU that import is most of a one-file transcription's wait).

`load_whisper_encoder(folder)` reads a checkpoint folder saved by transformers (config.json, model.safetensors,
preprocessor_config.json), either a whole Whisper model (keys model.encoder.*) or an encoder saved alone, as mome's
demo encoder is. `LogMel` computes what WhisperFeatureExtractor computes with torch (its torch path): pad to the
window, 400-point STFT every 160 samples, power, 80 Slaney mel bands, log10, floor at the clip's maximum - 8, then
(x + 4) / 4. tests/test_llama.py checks both against transformers on the same weights and audio.

Notation for shapes: B clips, S samples, M mel bands, T mel frames (100 a second), P encoder positions (T / 2),
D width, F MLP width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .llama import Embedding, NotSupported, build_from_weights, check_fields, read_json, read_weights


# The numbers of preprocessor_config.json and config.json that size the features and the encoder: whole numbers.
FEATURE_FIELDS = ("feature_size", "sampling_rate", "n_fft", "hop_length", "chunk_length")
ENCODER_FIELDS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                  "max_source_positions")


def hertz_to_slaney(hz: np.ndarray) -> np.ndarray:
    """The Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    mel = 3.0 * hz / 200.0
    log_step = 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * log_step, mel)


def slaney_to_hertz(mel: np.ndarray) -> np.ndarray:
    hz = 200.0 * mel / 3.0
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), hz)


def mel_filters(n_fft: int, n_mels: int, sampling_rate: int, max_hz: float = 8000.0) -> np.ndarray:
    """(n_fft / 2 + 1, M) triangular Slaney-normalised filters from 0 Hz to max_hz, in float64."""
    fft_hz = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
    edges = slaney_to_hertz(np.linspace(hertz_to_slaney(np.float64(0.0)), hertz_to_slaney(np.float64(max_hz)),
                                        n_mels + 2))  # (M + 2,) band edges
    widths = np.diff(edges)  # (M + 1,)
    distance = edges[None, :] - fft_hz[:, None]  # (n_fft / 2 + 1, M + 2)
    rising = -distance[:, :-2] / widths[:-1]
    falling = distance[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]  # equal area per band


class LogMel(nn.Module):
    """B waveforms at 16 kHz (S samples each, S <= n_samples) -> (B, M, T) normalised log-mel features."""

    def __init__(self, feature_size: int = 80, sampling_rate: int = 16_000, n_fft: int = 400, hop_length: int = 160,
                 chunk_length: int = 30):
        super().__init__()
        self.n_fft, self.hop_length, self.sampling_rate = n_fft, hop_length, sampling_rate
        self.n_samples = chunk_length * sampling_rate
        filters = mel_filters(n_fft, feature_size, sampling_rate)
        self.register_buffer("filters", torch.from_numpy(filters).float().T.contiguous(), persistent=False)  # (M, n)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def _apply(self, fn, recurse=True):
        """Moved with the model, but kept in float32 when it is cast (to bf16 on a GPU): the features are computed
        in float32 from exact filters, as transformers' extractor computes them."""
        filters, window = self.filters, self.window
        super()._apply(fn, recurse)
        if self.filters.dtype != torch.float32:
            self.filters, self.window = filters.to(self.filters.device), window.to(self.window.device)
        return self

    @classmethod
    def from_config(cls, d: dict) -> "LogMel":
        """From a preprocessor_config.json written by WhisperFeatureExtractor."""
        if d.get("dither", 0.0) or d.get("do_normalize"):
            raise NotSupported("a Whisper feature extractor with dither or normalisation")
        check_fields(d, whole=FEATURE_FIELDS)
        return cls(d.get("feature_size", 80), d.get("sampling_rate", 16_000), d.get("n_fft", 400),
                   d.get("hop_length", 160), d.get("chunk_length", 30))

    def forward(self, waveforms: list) -> torch.Tensor:
        batch = torch.zeros(len(waveforms), self.n_samples, device=self.window.device)  # (B, S) zero-padded
        for i, w in enumerate(waveforms):
            w = torch.as_tensor(w, dtype=torch.float32)
            if batch.is_cuda and w.device.type == "cpu":
                w = w.pin_memory()  # then the copy is queued like a kernel, instead of waiting for the GPU's work
            batch[i, : len(w)].copy_(w, non_blocking=True)
        stft = torch.stft(batch, self.n_fft, self.hop_length, window=self.window.float(), return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()  # (B, n_fft / 2 + 1, T): the last frame is dropped
        log_mel = torch.clamp(self.filters.float() @ power, min=1e-10).log10()  # (B, M, T), float32 throughout
        floor = log_mel.amax(dim=(1, 2), keepdim=True) - 8.0  # 80 dB below each clip's loudest
        return (torch.maximum(log_mel, floor) + 4.0) / 4.0


@dataclass
class WhisperEncoderConfig:
    num_mel_bins: int  # M
    d_model: int  # D
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int  # F
    max_source_positions: int  # P

    @classmethod
    def from_dict(cls, d: dict) -> "WhisperEncoderConfig":
        if d.get("model_type") != "whisper":
            raise NotSupported(f"model_type {d.get('model_type')!r} (only whisper)")
        if d.get("activation_function", "gelu") != "gelu":
            raise NotSupported(f"activation {d.get('activation_function')!r}")
        check_fields(d, whole=ENCODER_FIELDS)
        return cls(d["num_mel_bins"], d["d_model"], d["encoder_layers"], d["encoder_attention_heads"],
                   d["encoder_ffn_dim"], d["max_source_positions"])


class EncoderLayer(nn.Module):
    def __init__(self, config: WhisperEncoderConfig):
        super().__init__()
        D, self.heads = config.d_model, config.encoder_attention_heads
        self.self_attn = nn.Module()  # (in transformers' order of parameters)
        self.self_attn.k_proj = nn.Linear(D, D, bias=False)
        self.self_attn.v_proj = nn.Linear(D, D)
        self.self_attn.q_proj = nn.Linear(D, D)
        self.self_attn.out_proj = nn.Linear(D, D)
        self.self_attn_layer_norm = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, D)
        self.final_layer_norm = nn.LayerNorm(D)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, P, D = x.shape
        a = self.self_attn
        split = lambda t: t.view(B, P, self.heads, D // self.heads).transpose(1, 2)  # noqa: E731 (B, heads, P, d)
        out = F.scaled_dot_product_attention(split(a.q_proj(x)), split(a.k_proj(x)), split(a.v_proj(x)))
        return a.out_proj(out.transpose(1, 2).reshape(B, P, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    """(B, M, 2P) log-mel features -> (B, P, D) states; parameter names are those of transformers' WhisperEncoder."""

    def __init__(self, config: WhisperEncoderConfig):
        super().__init__()
        self.config = config
        D = config.d_model
        self.conv1 = nn.Conv1d(config.num_mel_bins, D, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(D, D, kernel_size=3, stride=2, padding=1)
        self.embed_positions = Embedding(config.max_source_positions, D)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(D)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        expected = 2 * self.config.max_source_positions
        if mel.shape[-1] != expected:
            raise ValueError(f"Whisper's encoder takes {expected} mel frames, got {mel.shape[-1]}")
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)  # (B, P, D)
        x = x + self.embed_positions.weight
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


def check_whisper_folder(folder) -> None:
    """What transformers' Whisper classes need of a checkpoint folder's configs and do not check (they fail with a
    TypeError, or load the weights into whatever model_type says and fail after a report of every key): each a JSON
    object, config.json's model_type whisper, whole numbers where its numbers go. ValueError naming the file; a file
    the folder lacks is left to them."""
    folder = Path(folder)
    for name, fields, what in (("config.json", ENCODER_FIELDS, "a Whisper config"),
                               ("preprocessor_config.json", FEATURE_FIELDS, "a Whisper feature extractor's config")):
        if not (folder / name).is_file():
            continue
        settings = read_json(folder / name)
        try:
            if name == "config.json" and settings.get("model_type") != "whisper":
                raise ValueError(f"model_type {settings.get('model_type')!r}, not whisper")
            check_fields(settings, whole=fields)
        except ValueError as e:
            raise ValueError(f"{folder / name}: not {what}: {e}") from e


def load_whisper_encoder(folder, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(WhisperEncoder, LogMel) from a transformers Whisper checkpoint folder; frozen, in eval mode. NotSupported
    for what this module does not run; ValueError, naming the file, for a file that cannot be read, a config of
    another model or with a field of the wrong type (check_whisper_folder), or weights that do not fit the config."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "preprocessor_config.json").is_file():
        raise NotSupported(f"{folder} has no config.json or preprocessor_config.json")
    check_whisper_folder(folder)
    try:
        config = WhisperEncoderConfig.from_dict(read_json(folder / "config.json"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{folder / 'config.json'}: not a Whisper config ({e!r} missing or wrong)") from e
    features = LogMel.from_config(read_json(folder / "preprocessor_config.json"))
    if features.n_samples != config.max_source_positions * 2 * features.hop_length:
        raise NotSupported(f"{folder}: the feature window does not match the encoder's positions")
    weights = read_weights(folder)
    if any(n.startswith("model.encoder.") for n in weights):  # a whole Whisper model: keep its encoder
        weights = {n[len("model.encoder."):]: t for n, t in weights.items() if n.startswith("model.encoder.")}
    encoder = build_from_weights(lambda: WhisperEncoder(config), weights, folder, "Whisper")
    return encoder.to(device=device, dtype=dtype), features.to(device)


__all__ = ["FEATURE_FIELDS", "ENCODER_FIELDS", "LogMel", "WhisperEncoderConfig", "WhisperEncoder", "mel_filters",
           "check_whisper_folder", "load_whisper_encoder"]
