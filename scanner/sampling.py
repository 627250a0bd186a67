"""Which documents a sampled sweep scores, decided by a keyed hash and nothing else.

A document is in the sample when a keyed hash of (seed, its sample_id) falls below the rate; a
first stage (shard_rate < 1) keeps whole input files the same way, keyed by the file's source
name (its path under the inputs' folder, kept by the run folder on resume and --add), so the bytes
of a file left out are never read. Both are Poisson (Bernoulli) designs: every unit is in
with the same probability, independently, so

- the sample is the same on any cluster size, in any order, and on resume;
- a corpus that grows keeps every earlier sampled document (a new file adds its own);
- a lower rate's sample is inside a higher rate's (same seed).

The estimates that follow from the design are in scanner.design.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

SCALE = float(1 << 64)


@dataclass(frozen=True)
class Sampling:
    rate: float = 1.0  # documents kept within a read file
    shard_rate: float = 1.0  # first stage: input files read (their bytes are never touched otherwise)
    seed: int = 0
    target: int | None = None  # --sample N: the rate is N / the documents of the files read, fixed at the run's start

    def __post_init__(self):
        for name in ("rate", "shard_rate"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")
        if self.target is not None and self.target < 1:
            raise ValueError(f"--sample must be a positive number of documents, got {self.target}")

    @property
    def active(self) -> bool:
        return self.rate < 1 or self.shard_rate < 1 or self.target is not None

    def identity(self) -> dict:
        """What a resumed run must share (the rate a --sample target gave is saved in the folder)."""
        return {k: v for k, v in asdict(self).items() if not (k == "rate" and self.target is not None)}


def uniforms(keys: Iterable[str], seed: int, stage: str) -> np.ndarray:
    """A number in [0, 1) per key from a keyed BLAKE2b: the same on every machine and Python."""
    key = f"scanner-sample:{stage}:{seed}".encode()[:64]
    return np.array([int.from_bytes(hashlib.blake2b(k.encode(), key=key, digest_size=8).digest(), "big") / SCALE
                     for k in keys], dtype=float)


def in_sample(sample_ids: Iterable[str], seed: int, rate: float) -> np.ndarray:
    """Which documents a document rate keeps."""
    return uniforms(sample_ids, seed, "document") < rate


def file_picked(key: str, seed: int, shard_rate: float) -> bool:
    """Whether the first stage reads the input file of this key."""
    return bool(uniforms([key], seed, "file")[0] < shard_rate)
