"""Matryoshka token compression and the projectors into the LLM's embedding space.

An encoder gives T frames per clip (audio 50 Hz from Whisper, video 25 Hz from AV-HuBERT). At rate r every r consecutive
frames become one token, either by averaging them (avgpool) or by stacking them side by side (stack, width D*r); a
projector per modality and rate maps tokens to the LLM width. One set of weights holds the projectors of every rate.

A clip's last group may be partial (T not a multiple of r): it still becomes a token, from its real frames only
(avgpool averages what is there, stack fills the missing frames with zeros), so the end of an utterance is never dropped.
Padded frames of shorter clips in a batch never leak into a token.

Notation for shapes: B batch, T frames, D encoder width, r rate, N = ceil(T / r) tokens, H LLM width.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration import COMPRESSION_KINDS


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A small host tensor (lengths, token ids) on `device` without waiting for the device. A plain copy to a GPU
    first waits for all the work queued on it (the encoders, say), so that the host cannot queue what follows
    meanwhile; from pinned memory, the copy is queued like a kernel."""
    device = torch.device(device)
    if t.device == device or device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def compressed_lengths(lengths: torch.Tensor, rate: int) -> torch.Tensor:
    """Tokens per clip at this rate: ceil(frames / rate)."""
    return torch.div(lengths + rate - 1, rate, rounding_mode="floor")


def compress(x: torch.Tensor, lengths: torch.Tensor, rate: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, D) frames with real lengths (B,) -> (B, N, D) [avgpool] or (B, N, D*r) [stack] tokens and lengths (B,)
    (where the lengths were given: on the host, they are read without waiting for the device)."""
    if kind not in COMPRESSION_KINDS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSION_KINDS)}, got {kind!r}")
    if rate < 1:
        raise ValueError(f"compression rate must be >= 1, got {rate}")
    B, T, D = x.shape
    N = -(-T // rate)
    mask = torch.arange(N * rate, device=x.device) < to_device(lengths, x.device).unsqueeze(-1)  # (B, N*r): real
    x = nn.functional.pad(x, (0, 0, 0, N * rate - T))  # (B, N*r, D)
    x = x * mask.unsqueeze(-1).to(x.dtype)
    groups = x.view(B, N, rate, D)  # (B, N, r, D)
    if kind == "avgpool":
        count = mask.view(B, N, rate).sum(-1, keepdim=True).clamp(min=1)  # (B, N, 1)
        tokens = groups.sum(dim=2) / count.to(x.dtype)  # (B, N, D)
    else:
        tokens = groups.reshape(B, N, rate * D)  # (B, N, D*r)
    return tokens, compressed_lengths(lengths, rate)


class Projector(nn.Module):
    """Linear(in, hidden) -> ReLU -> Linear(hidden, H): tokens into the LLM's embedding space."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class MatryoshkaCompressor(nn.Module):
    """One modality's compression at each of its rates, with one projector per rate."""

    def __init__(self, in_dim: int, rates: list[int], kind: str, hidden: int, out_dim: int):
        super().__init__()
        if kind not in COMPRESSION_KINDS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSION_KINDS)}, got {kind!r}")
        self.kind = kind
        self.rates = sorted(set(rates))
        width = {r: in_dim * (r if kind == "stack" else 1) for r in self.rates}
        self.projectors = nn.ModuleDict({str(r): Projector(width[r], hidden, out_dim) for r in self.rates})

    def projector_rate(self, rate: int, any_rate: bool = False) -> int:
        """The trained rate whose projector serves `rate`: itself, or with any_rate (avgpool only) the nearest one."""
        if rate in self.rates:
            return rate
        trained = ", ".join(map(str, self.rates))
        if not any_rate:
            raise ValueError(f"rate {rate} was not trained; trained rates: {trained}")
        if self.kind != "avgpool":
            raise ValueError(f"rate {rate} was not trained and {self.kind} tokens only fit their own rate's projector")
        return min(self.rates, key=lambda r: (abs(r - rate), r))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, rate: int, any_rate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) frames -> (B, N, H) LLM embeddings and their lengths (B,)."""
        projector = self.projectors[str(self.projector_rate(rate, any_rate))]
        tokens, token_lengths = compress(x.to(projector.fc1.weight.dtype), lengths, rate, self.kind)
        return projector(tokens), token_lengths


__all__ = ["COMPRESSION_KINDS", "to_device", "compressed_lengths", "compress", "Projector", "MatryoshkaCompressor"]
