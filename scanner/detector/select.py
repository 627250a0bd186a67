"""Fitting a detector of either kind, and the tabular detector's form chosen by out-of-fold AUC.

On a few hundred labelled samples a learned combination of 25 aggregates loses to the best of
them alone (measured on SmolLM2-135M calibrated on 400 texts: the tabular MLP 0.946 AUC at 4
exposures, Min-K%++ 50 alone 0.991, a logistic regression 0.982). So the tabular detector is
whichever of these forms scores the samples it was given best:

  mlp          the MLP over every aggregate
  linear       a logistic regression over every aggregate
  <score>      a logistic regression over one classic score (its AUC is that score's)

An MLP and the linear model are judged by out-of-fold AUC over train + validation (each sample
scored by a fit that never saw it); a single score needs no fit, so its AUC over the same samples
is its estimate. The chosen form is then fitted on train (validation stops the MLP) and recorded
in the detector's info with every form's estimate. With more data the learned forms win and are
chosen; the FiMMIA detector keeps its published form. Cross-fitting (scanner.train) refits the
chosen form on each fold and never chooses again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from scanner.detector.data import aggregates, available_classic, split_of
from scanner.detector.mlp import MLPDetector
from scanner.metrics import roc_auc
from scanner.scoring import registry

SELECTION_FOLDS = 4
LEARNED = {"mlp": (64, 32), "linear": ()}


def out_of_fold(df: pl.DataFrame, fit: Callable[[pl.DataFrame, pl.DataFrame], MLPDetector], seed: int, folds: int,
                salt: str) -> np.ndarray:
    """Each sample's member probability from a detector that never saw it: the samples are cut
    into `folds` parts by id; each part is scored by fit(rest, stop) on the others, 80% of them
    to fit and 20% to stop early. `salt` keeps nested uses from sharing folds."""
    fold = np.array([int(split_of(f"{salt}\0{s}", seed) * folds) for s in df["sample_id"]])
    stop = np.array([split_of(f"{salt}-stop\0{s}", seed) < 0.2 for s in df["sample_id"]])
    scores = np.full(df.height, np.nan)
    for k in range(folds):
        held = fold == k
        det = fit(df.filter(pl.Series((fold != k) & ~stop)), df.filter(pl.Series((fold != k) & stop)))
        scores[held] = det.predict_proba(df.filter(pl.Series(held)))
    return scores


def form_estimates(both: pl.DataFrame, seed: int) -> dict[str, float]:
    """Every tabular form's AUC estimate over these samples, train + validation (see the module's
    docstring)."""
    y = both["label"].to_numpy()
    X, names = aggregates(both)  # nulls filled as the fitted forms see them
    estimates = {name: roc_auc(y, registry.member_sign(name) * X[:, names.index(name)]) for name in available_classic(both)}
    for form, hidden in LEARNED.items():
        oof = out_of_fold(both, lambda a, b: MLPDetector(kind="tabular", hidden=hidden, seed=seed).fit(a, b),
                          seed, SELECTION_FOLDS, salt=f"select-{form}")
        estimates[form] = roc_auc(y, oof)
    return estimates


def choose_form(samples: pl.DataFrame, seed: int) -> tuple[str, dict[str, float]]:
    """The tabular form with the best estimate over these samples, and every form's estimate."""
    estimates = form_estimates(samples, seed)
    return max(estimates, key=estimates.get), estimates


def tabular_detector(form: str, seed: int = 0, target_fpr: float = 0.01) -> MLPDetector:
    """An unfitted tabular detector of one form."""
    if form in LEARNED:
        return MLPDetector(kind="tabular", hidden=LEARNED[form], seed=seed, target_fpr=target_fpr)
    return MLPDetector(kind="tabular", hidden=(), inputs=[form], seed=seed, target_fpr=target_fpr)


def fit_detector(kind: str, train: pl.DataFrame, val: pl.DataFrame, seed: int = 0,
                 target_fpr: float = 0.01) -> MLPDetector:
    if kind != "tabular":
        return MLPDetector(kind=kind, seed=seed, target_fpr=target_fpr).fit(train, val)
    form, estimates = choose_form(pl.concat([train, val], how="vertical_relaxed"), seed)
    det = tabular_detector(form, seed, target_fpr).fit(train, val)
    det.info |= {"form": form, "form_estimates": estimates}
    return det
