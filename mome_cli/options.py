"""What the CLI builds and catches before it calls the library: the recognizer's options and its usage error.

Torch-free, so that `mome transcribe` reaches transcribe.run before torch is imported, and its first input is read
while torch loads. recognizer.py re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass

# --beam's ceiling. Beam search's gains stop well before it (the predecessors decoded with 15 beams, auto_avsr's LRS3
# recipe with 40; on examples/demo.mp4 the demo model took 3.5x as long with 100 beams as with 4), while the rows
# decoded at once, and their cache, grow as beam x batch size: with 5000 beams that clip held 17 GB of CPU memory and
# had not ended after 5 minutes, and 100000 asked for 26 GB at once. Not the vocabulary (259 byte tokens for demo,
# 128,256 for Llama 3): it bounds neither the cost nor the gain.
MAX_BEAM = 64


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


__all__ = ["MAX_BEAM", "RecognizeOptions", "UsageProblem"]
