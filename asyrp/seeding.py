"""Seeded construction that stays deterministic under thread runners.

Module initialisers draw from torch's *global* RNG. Two threads building seeded models at once (Prefect's
thread runner maps tasks over threads) would interleave their draws and get different weights, so every
seeded construction goes through ``seeded``: one lock, a forked RNG state, the seed.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_LOCK = threading.RLock()


@contextmanager
def seeded(seed: int):
    """Run a block on the global CPU RNG seeded with ``seed``, serialised across threads; state restored."""
    with _LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
