"""Seeds derived from the run's seed, so each random stream is independent and reproducible.

Every stream (the student's initial weights, each epoch's data order and augmentation, a
method's own sampling) gets its own seed, ``derive_seed(seed, "what", ...)``. That is why every
method run with one seed starts from identical student weights (the reference zoo's ``--s_init``),
and why a run resumed at epoch e sees exactly the batches it would have seen without the break.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across runs and platforms)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@contextmanager
def seeded(*parts: object) -> Iterator[None]:
    """Run a block under torch's global RNG seeded from ``parts``, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*parts))
        yield
