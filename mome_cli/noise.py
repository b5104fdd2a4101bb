"""Noise for speech: sources looped to any length, summed, and mixed in at a signal-to-noise ratio.

SNR, everywhere in mome: SNR = 10 log10(P_speech / P_noise) dB, each power the mean square over the whole clip (not
over speech frames only), as AV-HuBERT and auto_avsr mix. The noise is scaled to meet it; the speech keeps its level.

Two users build babble (other utterances summed) from the same pieces:

- evaluation (`LoopedNoise`): a fixed pool of talkers, each at unit RMS, looped end to end on a track; an utterance
  hears a window of it at a start drawn from (seed, utterance id), so every SNR and every run hears the same noise;
- training augmentation (`add_babble`): other training utterances drawn at each step with the step's generator, each
  looped from a random offset, at their own levels.

Numpy only (no torch): usable from any stage. Notation for shapes: S samples.
"""

from __future__ import annotations

import zlib

import numpy as np


def looped(source: np.ndarray, start: int, n: int) -> np.ndarray:
    """(n,) samples of source repeated end to end, from offset start: source[(start + t) % len(source)]."""
    t = np.arange(start, start + n)  # (n,) positions on the endless track
    return source[t % len(source)]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 10 log10(P_speech / P_noise) = snr_db, powers over the whole clip; float32.

    Silent speech or silent noise is returned as it is (no level makes the ratio hold).
    """
    if len(noise) != len(speech):
        raise ValueError(f"noise has {len(noise)} samples, speech {len(speech)}")
    s = np.asarray(speech, dtype=np.float64)
    p_speech, p_noise = np.mean(s**2), np.mean(np.asarray(noise, dtype=np.float64) ** 2)
    if p_speech == 0 or p_noise == 0:
        return np.asarray(speech, dtype=np.float32)
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    return (s + gain * noise).astype(np.float32)


class LoopedNoise:
    """Noise windows from a sum of sources, each at unit RMS and looped end to end.

    `window(utterance_id, n)` sums the first `count` sources whose id is not utterance_id (so give one spare when
    sources come from the evaluated corpus) over a window of n samples starting at a point drawn from (seed, id) in a
    track as long as the longest source: the same window for an utterance whatever else is evaluated. A source with
    no id (a noise file) is never excluded.
    """

    def __init__(self, sources: list[tuple[str | None, np.ndarray]], count: int, seed: int = 0):
        usable = [(i, np.asarray(a, dtype=np.float64)) for i, a in sources if len(a) and np.any(a)]
        if len(usable) < count or count < 1:
            raise ValueError(f"need at least {max(count, 1)} non-silent noise sources, got {len(usable)}")
        self.ids = [i for i, _ in usable]
        self.sources = [a / np.sqrt(np.mean(a**2)) for _, a in usable]  # (S_k,) each, unit RMS
        self.count, self.seed = count, seed
        self.length = max(len(a) for a in self.sources)  # track length, samples: every source loops within it

    def talkers_for(self, utterance_id: str) -> list[int]:
        return [k for k, i in enumerate(self.ids) if i is None or i != utterance_id][: self.count]

    def window(self, utterance_id: str, n: int) -> np.ndarray:
        """(n,) float64 noise for one utterance; the same every time for the same id, seed and n."""
        chosen = self.talkers_for(utterance_id)
        if len(chosen) < self.count:
            raise ValueError(f"{utterance_id}: only {len(chosen)} noise sources other than itself")
        rng = np.random.default_rng([self.seed, zlib.crc32(utterance_id.encode("utf-8"))])
        start = int(rng.integers(0, self.length))  # the sources loop: a window may start anywhere in the track
        noise = np.zeros(n)
        for k in chosen:
            noise += looped(self.sources[k], start, n)  # every talker read at the same point of the track
        return noise


def add_babble(audio: np.ndarray, others: list[np.ndarray], snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """audio (S,) plus the sum of others (each looped to S samples from a random offset) at snr_db."""
    S = len(audio)
    babble = np.zeros(S, dtype=np.float64)
    for other in others:
        if len(other):
            babble += looped(other, int(rng.integers(0, len(other))), S)
    return mix_at_snr(audio, babble, snr_db)


__all__ = ["looped", "mix_at_snr", "LoopedNoise", "add_babble"]
