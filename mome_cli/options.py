"""What the CLI builds and catches before it calls the library: the recognizer's options and its usage error.

Torch-free, so that `mome transcribe` reaches transcribe.run before torch is imported, and its first input is read
while torch loads. recognizer.py re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass


class UsageProblem(ValueError):
    """A model name, device or rate the user asked for that cannot be had (the CLI exits 2)."""


@dataclass(frozen=True)
class RecognizeOptions:
    mode: str = "av"  # a | v | av
    rate: tuple | None = None  # (audio, video) with None for an absent modality; None: the model's first trained rate
    any_rate: bool = False  # allow a rate the model was not trained on
    beam: int = 1
    batch_size: int = 8  # segments decoded together
    max_new_tokens: int | None = None  # None: from the length of each segment (token_budget)
    max_segment: float | None = None  # seconds; None: Recognizer.max_segment_seconds
    pack: bool = False  # cut only what is longer than the limit, not at every pause (media.split_at_pauses)


__all__ = ["RecognizeOptions", "UsageProblem"]
