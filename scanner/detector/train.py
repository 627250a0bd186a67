"""`scanner train`: fit both detectors and the blind baseline on a scan's labelled samples, as
one central Ray task.

The model folder holds <kind>.safetensors + <kind>.json per detector (with its operating point:
TP/FP counts at the calibrated threshold on the held-out test samples, which `sweep` needs to
correct flag rates); scan_config.json: the scan settings the features came from, so a sweep
computes the same features; split.json: the seed, the
split fractions and the test sample ids, so `scanner evaluate` scores only samples that no
detector saw in training, validation or calibration; and baseline_scores.parquet: the blind
baseline's out-of-fold scores of the same samples (nested CV over their texts: each score comes
from a model that never saw that text), which `evaluate` puts next to the detectors.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline
from scanner.contamination import OperatingPoint
from scanner.detector.data import grouped_split, load_features, load_texts
from scanner.detector.mlp import KINDS, MLPDetector
from scanner.errors import InputError

TASK_CPUS = 2  # the baseline's outer folds run in parallel inside the task


def labelled_features(run_dir: Path) -> pl.DataFrame:
    df = load_features(run_dir)
    df = df.filter(pl.col("label").is_not_null())
    if df.height == 0 or df["label"].n_unique() < 2:
        raise InputError(f"{run_dir}: training needs labelled members (1) and non-members (0)")
    return df


def blind_baseline(run_dir: Path, df: pl.DataFrame, seed: int, n_jobs: int | None = None,
                   progress=lambda m: None):
    """The model-free baseline over the texts of df's samples: nested CV, so each sample's
    out-of-fold score comes from a model that never saw its text."""
    texts = load_texts(Path(run_dir), df["sample_id"].to_list())
    samples = df.select("sample_id", "label", "source").with_columns(texts["text"])
    return run_baseline(samples, seed=seed, n_boot=200, n_jobs=n_jobs, progress=progress)


def train_detectors(run_dir: str, out_dir: str, seed: int = 0, target_fpr: float = 0.01) -> dict:
    df = labelled_features(Path(run_dir))
    parts = grouped_split(df, seed)
    for name, mask in parts.items():
        labels = df.filter(pl.Series(mask))["label"]
        if labels.n_unique() < 2:
            raise InputError(f"the {name} split of {df.height} samples lacks a class; scan more samples")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    test = df.filter(pl.Series(parts["test"]))
    for kind in KINDS:
        det = MLPDetector(kind=kind, seed=seed, target_fpr=target_fpr)
        det.fit(df.filter(pl.Series(parts["train"])), df.filter(pl.Series(parts["val"])))
        det.calibrate(df.filter(pl.Series(parts["calib"])))
        det.info["operating_point"] = asdict(OperatingPoint.measure(det.flag(test), test["label"].to_numpy()))
        det.save(out)
        summary[kind] = det.info | {"threshold": det.threshold}
    baseline = blind_baseline(Path(run_dir), df, seed, n_jobs=TASK_CPUS)
    baseline.scores.select("sample_id", "score").write_parquet(out / "baseline_scores.parquet")
    summary["blind_baseline"] = {"auc": baseline.metrics["auc"], "best_model": baseline.metrics["best_model"]}
    split = {"run_dir": str(run_dir), "seed": seed, "target_fpr": target_fpr,
             "counts": {k: int(np.sum(v)) for k, v in parts.items()},
             "test_ids": test["sample_id"].to_list()}
    (out / "split.json").write_text(json.dumps(split))
    scan_config = json.loads((Path(run_dir) / "run.json").read_text())["config"]
    (out / "scan_config.json").write_text(json.dumps(scan_config, indent=2))
    return {"detectors": {k: v for k, v in summary.items() if k in KINDS}, "baseline": summary["blind_baseline"],
            "split": split["counts"]}


def train_on_ray(run_dir: str, out_dir: str, seed: int = 0, target_fpr: float = 0.01) -> dict:
    """The central training task: one Ray task next to the data, whatever node the driver is on."""
    import ray

    if not ray.is_initialized():
        ray.init()
    task = ray.remote(num_cpus=TASK_CPUS, max_retries=0)(train_detectors)
    try:
        return ray.get(task.remote(str(Path(run_dir).resolve()), str(Path(out_dir).resolve()), seed, target_fpr))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, InputError):  # bad input: one clear line, not a remote traceback
            raise InputError(str(e.cause)) from None
        raise
