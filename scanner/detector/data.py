"""Feature rows -> detector inputs: a run's labelled rows, the grouped split, per-sample aggregates
and per-neighbor rows, the blind baseline over their texts. Sign convention, everywhere: dL = loss(neighbor) - loss(original)."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline
from scanner.errors import InputError
from scanner.runfolder import RunFolder
from scanner.scoring import registry

NEIGHBOR_LISTS = ["nb_dL", "nb_cos_dist", "nb_l2"]


def member_score(df: pl.DataFrame, name: str) -> np.ndarray:
    """The score oriented so that higher = member (the registry's direction)."""
    return registry.member_sign(name) * df[name].cast(pl.Float64).to_numpy()


def split_of(sample_id: str, seed: int) -> float:
    """A stable number in [0, 1) per sample: the split never depends on row order or machine."""
    h = hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


def grouped_split(df: pl.DataFrame, seed: int, fractions=(0.5, 0.15, 0.15, 0.2)) -> dict[str, np.ndarray]:
    """Row masks for train / validation (early stopping) / calibration (threshold) / test, by
    sample: a sample and all its neighbors land in exactly one part."""
    u = np.array([split_of(s, seed) for s in df["sample_id"]])
    edges = np.cumsum((0,) + tuple(fractions))
    names = ("train", "val", "calib", "test")
    return {n: (u >= lo) & (u < hi) for n, lo, hi in zip(names, edges[:-1], edges[1:])}


def available_classic(df: pl.DataFrame) -> list[str]:
    """The registered scores present with values, in registration order (Min-K%++ is null for
    backends without vocab stats; a score module's own scores count once the run's features were
    read, which loads its modules)."""
    return [c for c in registry.known() if c in df.columns and df[c].null_count() < df.height]


def aggregates(df: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per-sample table: classic scores + mean/std/min/max of each neighbor list + log length."""
    cols = available_classic(df)
    exprs = [pl.col(c).cast(pl.Float64).fill_null(0.0) for c in cols]
    names = list(cols)
    for lst in NEIGHBOR_LISTS:
        for stat in ("mean", "std", "min", "max"):
            exprs.append(getattr(pl.col(lst).list, stat)().cast(pl.Float64).fill_null(0.0).alias(f"{lst}_{stat}"))
            names.append(f"{lst}_{stat}")
    exprs.append(pl.col("n_tokens").cast(pl.Float64).log().alias("log_tokens"))
    names.append("log_tokens")
    return df.select(exprs).to_numpy(), names


def neighbor_kinds(df: pl.DataFrame) -> list[str]:
    """The neighbor kinds of a run, sorted: the one-hot columns of the FiMMIA detector's rows."""
    return sorted(df["nb_kinds"].explode().drop_nulls().unique().to_list())


def neighbor_rows(df: pl.DataFrame, kinds: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One row per (sample, neighbor): [dL, one-hot of its kind (when `kinds` are given),
    projected embedding difference...]; and the row's sample index, to average predictions back
    per sample. The kind tells the detector how far each neighbor moved the input: a loss change
    under colour inversion means something else than one under mild noise."""
    k = df["nb_dL"].list.len().to_numpy()
    if (k == 0).any():
        raise InputError("the FiMMIA detector needs neighbors: some samples were scanned with --neighbors 0")
    cols = [np.concatenate(df["nb_dL"].to_list()).reshape(-1, 1)]
    if kinds:
        row_kinds = df["nb_kinds"].explode().to_list()
        unknown = sorted(set(row_kinds) - set(kinds))
        if unknown:
            raise InputError(f"neighbor kinds {unknown} were not among the detector's training kinds {kinds}")
        onehot = np.zeros((len(row_kinds), len(kinds)))
        onehot[np.arange(len(row_kinds)), [kinds.index(x) for x in row_kinds]] = 1.0
        cols.append(onehot)
    proj = df["nb_de_proj"]
    if proj.null_count() == 0:
        cols.append(np.concatenate(proj.to_list()).astype(np.float64).reshape(len(cols[0]), -1))
    return np.hstack(cols), np.repeat(np.arange(df.height), k)


def labelled_features(run: RunFolder) -> pl.DataFrame:
    df = run.features().filter(pl.col("label").is_not_null())
    if df.height == 0 or df["label"].n_unique() < 2:
        raise InputError(f"{run.uri}: training needs labelled members (1) and non-members (0)")
    return df


def blind_baseline(df: pl.DataFrame, seed: int, n_jobs: int | None = None, progress=lambda m: None):
    """The model-free baseline over the texts (and the images of image-text samples) of df's
    samples, which the scan keeps: nested CV, so each sample's out-of-fold score comes from a model
    that never saw it."""
    if "text" not in df.columns:
        raise InputError("these features hold no texts (a sweep's output): the blind baseline needs a scan run")
    keep = ["sample_id", "label", "source", "text"] + (["image"] if "image" in df.columns else [])
    return run_baseline(df.select(keep), seed=seed, n_boot=200, n_jobs=n_jobs, progress=progress)
