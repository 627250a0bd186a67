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

import numpy as np
import polars as pl

from scanner.contamination import OperatingPoint
from scanner.detector.data import blind_baseline, grouped_split, labelled_features, member_score
from scanner.detector.folder import KINDS, DetectorFolder
from scanner.detector.select import LEARNED, choose_form, fit_detector, out_of_fold, tabular_detector
from scanner.errors import InputError
from scanner.metrics import roc_auc
from scanner.runfolder import RunFolder
from scanner.storage import absolute, read_parquet_at

TASK_CPUS = 2  # the baseline's outer folds run in parallel inside the task


def cross_fitted_scores(df: pl.DataFrame, seed: int, folds: int, tabular_form: str | None = None) -> pl.DataFrame:
    """Member scores (higher = member) of every sample from detectors that never saw it
    (out_of_fold). Uses all samples where the saved detectors' test part is a fifth.

    The tabular detector keeps one form in every fold: `tabular_form`, the saved detector's (None:
    the form chosen over all samples). Choosing it again per fold would measure the choice's noise,
    not the detector; the price is that the form was chosen on samples among these (the saved
    detector's train and validation parts), which favours it a little. A single-score form needs
    no fit to rank samples: its column is the score itself, oriented, which ranks them as each
    fold's logistic map of it does; pooling the folds' maps instead would mis-rank samples of
    different folds (each fold scales the score its own way) and cost up to 0.007 AUC against the
    score (SmolLM2 at 1 exposure)."""
    if tabular_form is None:
        tabular_form, _ = choose_form(df, seed)
    columns = {"fimmia": out_of_fold(df, lambda rest, stop: fit_detector("fimmia", rest, stop, seed), seed, folds,
                                     salt="crossfit")}
    if tabular_form in LEARNED:
        columns["tabular"] = out_of_fold(df, lambda rest, stop: tabular_detector(tabular_form, seed).fit(rest, stop),
                                         seed, folds, salt="crossfit")
    else:
        columns["tabular"] = member_score(df, tabular_form)
    return pl.DataFrame({"sample_id": df["sample_id"]} | {kind: columns[kind] for kind in KINDS})


def given_baseline(df: pl.DataFrame, path: str) -> tuple[pl.DataFrame, dict]:
    """The blind baseline's out-of-fold scores of these samples, computed before (by `scanner
    calibrate`, on the same texts and seed): every sample must have one."""
    given = pl.from_arrow(read_parquet_at(path))
    keep = ["sample_id", "score"] + (["fold"] if "fold" in given.columns else [])  # (older files have no folds)
    scores = df.select("sample_id", "label").join(given.select(keep), on="sample_id", how="left")
    missing = scores.filter(pl.col("score").is_null())
    if missing.height:
        raise InputError(f"{path}: no blind-baseline score for {missing.height} of the {df.height} samples "
                         f"(e.g. {missing['sample_id'][0]!r})")
    return scores.select(keep), {"auc": roc_auc(scores["label"].to_numpy(), scores["score"].to_numpy()),
                                                 "best_model": f"given ({path})"}


def train_detectors(run_dir: str, out_dir: str, seed: int = 0, target_fpr: float = 0.01,
                    cross_fit_folds: int = 0, baseline_scores: str | None = None, exclude: tuple[str, ...] = ()) -> dict:
    """baseline_scores: a Parquet file of the blind baseline's out-of-fold scores of these very
    samples (sample_id, score), when the caller has them; else the baseline runs here. exclude:
    score columns the detectors must not take as inputs."""
    run = RunFolder.existing(run_dir)
    df = labelled_features(run)
    df = df.drop([c for c in exclude if c in df.columns])
    parts = grouped_split(df, seed)
    for name, mask in parts.items():
        labels = df.filter(pl.Series(mask))["label"]
        if labels.n_unique() < 2:
            raise InputError(f"the {name} split of {df.height} samples lacks a class; scan more samples")
    out = DetectorFolder(out_dir)
    summary = {}
    test = df.filter(pl.Series(parts["test"]))
    for kind in KINDS:
        det = fit_detector(kind, df.filter(pl.Series(parts["train"])), df.filter(pl.Series(parts["val"])), seed,
                           target_fpr)
        det.calibrate(df.filter(pl.Series(parts["calib"])))
        det.info["operating_point"] = asdict(OperatingPoint.measure(det.flag(test), test["label"].to_numpy()))
        out.save_detector(kind, *det.state())
        summary[kind] = det.info | {"threshold": det.threshold}
    if cross_fit_folds:
        out.write_crossfit_scores(cross_fitted_scores(df, seed, cross_fit_folds, summary["tabular"]["form"]))
    if baseline_scores:
        scores, baseline = given_baseline(df, baseline_scores)
    else:
        b = blind_baseline(df, seed, n_jobs=TASK_CPUS)
        scores, baseline = b.scores.select("sample_id", "fold", "score"), {k: b.metrics[k] for k in ("auc", "best_model")}
    out.write_baseline_scores(scores)
    split = {"run_id": run.run_id, "seed": seed, "target_fpr": target_fpr,
             "counts": {k: int(np.sum(v)) for k, v in parts.items()}, "test_ids": test["sample_id"].to_list()}
    out.write_split(split)
    out.write_scan_config(run.config)
    return {"detectors": summary, "baseline": baseline, "split": split["counts"]}


def train_on_ray(run_dir: str, out_dir: str, seed: int = 0, target_fpr: float = 0.01,
                 cross_fit_folds: int = 0, baseline_scores: str | None = None, exclude: tuple[str, ...] = ()) -> dict:
    """The central training task: one Ray task next to the data, whatever node the driver is on."""
    import ray

    from scanner.engine import make_room

    if not ray.is_initialized():
        ray.init()
    RunFolder.existing(run_dir)  # a clear error here, not from inside the task
    make_room(TASK_CPUS)
    task = ray.remote(num_cpus=TASK_CPUS, max_retries=0)(train_detectors)
    try:
        return ray.get(task.remote(absolute(run_dir), absolute(out_dir), seed, target_fpr, cross_fit_folds,
                                   baseline_scores and absolute(baseline_scores), tuple(exclude)))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, InputError):  # bad input: one clear line, not a remote traceback
            raise InputError(str(e.cause)) from None
        raise

