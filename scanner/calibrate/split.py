"""Members and non-members of held-out text, at random by sample id, and the members' exposure
groups. Seeded and independent of row order; independent too of the detector's own split
(scanner.detector.data.grouped_split hashes the same ids with another salt), so membership never
lines up with train / test."""

from __future__ import annotations

import polars as pl

from scanner.detector.data import split_of
from scanner.errors import InputError

NON_MEMBER = 0  # the exposure of a non-member


def calibration_split(samples: pl.DataFrame, members_fraction: float, exposures: list[int],
                      seed: int) -> tuple[pl.DataFrame, int]:
    """(sample_id, text, source, label, exposure) per distinct text, and how many rows repeated
    an earlier text: a text on both sides of the split would be a member and a non-member at once."""
    if not 0 < members_fraction < 1:
        raise InputError(f"--members-fraction {members_fraction} must lie strictly between 0 and 1")
    if not exposures or min(exposures) < 1:
        raise InputError(f"--exposures {exposures}: each must be a whole number of at least 1")
    distinct = samples.unique("text", keep="first", maintain_order=True)
    n = distinct.height
    n_members = round(n * members_fraction)
    if n_members < 2 * len(exposures) or n - n_members < 2:
        raise InputError(f"{n} distinct held-out texts are too few for {len(exposures)} exposure groups "
                         f"and non-members: give at least {4 * len(exposures)}")
    ids = distinct["sample_id"].to_list()
    u = [split_of(f"calibrate-members\0{s}", seed) for s in ids]
    v = [split_of(f"calibrate-exposure\0{s}", seed) for s in ids]
    member_order = sorted(range(n), key=lambda i: u[i])[:n_members]
    exposure = [NON_MEMBER] * n
    for rank, i in enumerate(sorted(member_order, key=lambda i: v[i])):
        exposure[i] = exposures[rank % len(exposures)]  # equal-sized groups
    out = distinct.select("sample_id", "text", "source").with_columns(
        pl.Series("exposure", exposure, pl.Int32)).with_columns(
        (pl.col("exposure") > NON_MEMBER).cast(pl.Int8).alias("label"))
    return out, samples.height - n


def training_stream(exposure: list[int], epochs: int, seed: int) -> list[int]:
    """The members' indices in the order the fine-tune sees them: per epoch, member i appears
    exposure[i] times, shuffled (seeded) so repeats of one text do not follow each other."""
    import numpy as np

    rng = np.random.default_rng(seed)
    stream: list[int] = []
    for _ in range(epochs):
        epoch = [i for i, e in enumerate(exposure) for _ in range(e)]
        stream += [epoch[j] for j in rng.permutation(len(epoch))]
    return stream
