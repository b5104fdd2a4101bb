"""torch's global random number generator, shared by the threads of one process.

Random weights are drawn from a seed in `seeded()` blocks, so that a tiny model or a fresh adapter is the same on
every run. torch's generator is one per process, though, and other code draws from it while building its modules
(face-alignment's networks, built in the read-ahead thread while the main thread builds the model). Every such
block takes one lock, and gives the generator back as it found it, so neither perturbs the other.
"""

from __future__ import annotations

import contextlib
import threading

_LOCK = threading.RLock()  # held by whoever draws from torch's global generator in a block of its own


@contextlib.contextmanager
def seeded(seed: int):
    """The block draws from torch's CPU generator seeded with `seed`; the generator is restored after it, and no
    other `seeded()` or `isolated()` block, in any thread, runs meanwhile."""
    import torch

    with _LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def isolated():
    """What the block draws from torch's CPU generator (third-party code building its modules) is taken back after
    it, and does not fall inside another thread's `seeded()` block."""
    import torch

    with _LOCK, torch.random.fork_rng(devices=[]):
        yield


__all__ = ["seeded", "isolated"]
