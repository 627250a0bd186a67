"""`scanner train`: fit both detectors and the blind baseline on a scan's labelled samples, as
one central Ray task, into a detector folder (scanner.detector.folder).

Each detector is saved with its operating point (TP/FP counts at the calibrated threshold on the
held-out test samples, which `sweep` needs to correct flag rates). The folder also records the
scan's run_id and settings (a sweep computes the same features), the split (so `evaluate` scores
only samples no detector saw in training, validation or calibration), and the blind baseline's
out-of-fold scores of the same samples (nested CV over their texts: each score comes from a
model that never saw that text), which `evaluate` puts next to the detectors.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline
from scanner.contamination import OperatingPoint
from scanner.detector.data import grouped_split, split_of
from scanner.detector.folder import KINDS, DetectorFolder
from scanner.detector.mlp import MLPDetector
from scanner.errors import InputError
from scanner.runfolder import RunFolder

TASK_CPUS = 2  # the baseline's outer folds run in parallel inside the task


def labelled_features(run: RunFolder) -> pl.DataFrame:
    df = run.features().filter(pl.col("label").is_not_null())
    if df.height == 0 or df["label"].n_unique() < 2:
        raise InputError(f"{run.uri}: training needs labelled members (1) and non-members (0)")
    return df


def blind_baseline(df: pl.DataFrame, seed: int, n_jobs: int | None = None, progress=lambda m: None):
    """The model-free baseline over the texts of df's samples (the scan keeps them): nested CV, so
    each sample's out-of-fold score comes from a model that never saw its text."""
    if "text" not in df.columns:
        raise InputError("these features hold no texts (a sweep's output): the blind baseline needs a scan run")
    return run_baseline(df.select("sample_id", "label", "source", "text"), seed=seed, n_boot=200, n_jobs=n_jobs,
                        progress=progress)


def cross_fitted_scores(df: pl.DataFrame, seed: int, folds: int) -> pl.DataFrame:
    """Member probabilities of every sample from detectors that never saw it: the samples are cut
    into `folds` parts by id; each part is scored by detectors fitted on the others (80% to fit,
    20% to stop early). Uses all samples where the saved detectors' test part is a fifth."""
    fold = np.array([int(split_of(f"crossfit\0{s}", seed) * folds) for s in df["sample_id"]])
    stop = np.array([split_of(f"crossfit-stop\0{s}", seed) < 0.2 for s in df["sample_id"]])
    scores = {kind: np.full(df.height, np.nan) for kind in KINDS}
    for k in range(folds):
        rest = df.filter(pl.Series((fold != k) & ~stop))
        val = df.filter(pl.Series((fold != k) & stop))
        held = fold == k
        for kind in KINDS:
            det = MLPDetector(kind=kind, seed=seed).fit(rest, val)
            scores[kind][held] = det.predict_proba(df.filter(pl.Series(held)))
    return pl.DataFrame({"sample_id": df["sample_id"]} | scores)


def train_detectors(run_dir: str, out_dir: str, seed: int = 0, target_fpr: float = 0.01,
                    cross_fit_folds: int = 0) -> dict:
    run = RunFolder.existing(run_dir)
    df = labelled_features(run)
    parts = grouped_split(df, seed)
    for name, mask in parts.items():
        labels = df.filter(pl.Series(mask))["label"]
        if labels.n_unique() < 2:
            raise InputError(f"the {name} split of {df.height} samples lacks a class; scan more samples")
    out = DetectorFolder(out_dir)
    summary = {}
    test = df.filter(pl.Series(parts["test"]))
    for kind in KINDS:
        det = MLPDetector(kind=kind, seed=seed, target_fpr=target_fpr)
        det.fit(df.filter(pl.Series(parts["train"])), df.filter(pl.Series(parts["val"])))
        det.calibrate(df.filter(pl.Series(parts["calib"])))
        det.info["operating_point"] = asdict(OperatingPoint.measure(det.flag(test), test["label"].to_numpy()))
        out.save_detector(kind, *det.state())
        summary[kind] = det.info | {"threshold": det.threshold}
    if cross_fit_folds:
        out.write_crossfit_scores(cross_fitted_scores(df, seed, cross_fit_folds))
    baseline = blind_baseline(df, seed, n_jobs=TASK_CPUS)
    out.write_baseline_scores(baseline.scores.select("sample_id", "score"))
    split = {"run_id": run.run_id, "seed": seed, "target_fpr": target_fpr,
             "counts": {k: int(np.sum(v)) for k, v in parts.items()}, "test_ids": test["sample_id"].to_list()}
    out.write_split(split)
    out.write_scan_config(run.config)
    return {"detectors": summary, "baseline": {"auc": baseline.metrics["auc"], "best_model": baseline.metrics["best_model"]},
            "split": split["counts"]}


def train_on_ray(run_dir: str, out_dir: str, seed: int = 0, target_fpr: float = 0.01,
                 cross_fit_folds: int = 0) -> dict:
    """The central training task: one Ray task next to the data, whatever node the driver is on."""
    import ray

    if not ray.is_initialized():
        ray.init()
    RunFolder.existing(run_dir)  # a clear error here, not from inside the task
    task = ray.remote(num_cpus=TASK_CPUS, max_retries=0)(train_detectors)
    try:
        return ray.get(task.remote(_absolute(run_dir), _absolute(out_dir), seed, target_fpr, cross_fit_folds))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, InputError):  # bad input: one clear line, not a remote traceback
            raise InputError(str(e.cause)) from None
        raise


def _absolute(path: str) -> str:
    """Local paths as the task must see them (it may run in another working directory)."""
    return path if "://" in str(path) else str(Path(path).resolve())
