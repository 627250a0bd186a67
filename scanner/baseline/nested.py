"""Nested cross-validation: honest model choice for the leakage baseline.

Outer folds only ever *evaluate*. Inside each outer training set, inner folds score every
candidate (and a stack of the best of each family); the winner is refitted on the outer training
set and predicts the outer test fold. Pooling the outer predictions gives one out-of-fold score
per sample, from models that never saw it, chosen without looking at it.

With `repeats` > 1 the outer folds are drawn again with other seeds and each sample's score is
the mean of its out-of-fold scores: on small sets one draw of the folds moves the AUC by several
hundredths, and the fold AUCs of all repeats feed the corrected CV interval (metrics.py).
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scanner.baseline.features import TextFeatures
from scanner.baseline.models import Candidate, candidates
from scanner.errors import InputError
from scanner.metrics import roc_auc

STACK = "stack"
REPEAT_SEED_STEP = 1000  # repeat r draws its outer and inner folds with seeds shifted by (r - 1) x this


@dataclass
class NestedResult:
    scores: np.ndarray  # out-of-fold P(member) of the model chosen in each outer fold (mean over repeats)
    family_scores: dict[str, np.ndarray]  # out-of-fold P(member) of each family's inner-best setting
    folds: list[dict] = field(default_factory=list)  # per repeat and outer fold: choice, inner and outer AUCs
    fold_of: np.ndarray | None = None  # each sample's outer test fold in the first repeat

    def fold_aucs(self, family: str | None = None) -> list[float]:
        """Each outer fold's AUC (all repeats) of the chosen model, or of one family's."""
        return [f["outer_auc"] if family is None else f["outer_auc_by_family"][family] for f in self.folds]

    @property
    def test_train_ratio(self) -> float:
        return float(np.mean([f["n_test"] / f["n_train"] for f in self.folds]))

    @property
    def best_model(self) -> str:
        """The family chosen in most outer folds (ties: the first chosen)."""
        return Counter(f["chosen_family"] for f in self.folds).most_common(1)[0][0]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _stacker():
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0))


def _fit_predict(c: Candidate, feats: TextFeatures, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    X = feats.block(c.block)
    with warnings.catch_warnings():
        # a weakly regularised fit may stop before full convergence; selection judges it by its
        # held-out AUC like any other candidate, so the warning would only be noise
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = c.build().fit(X[train], y[train])
    return model.predict_proba(X[test])[:, 1]


def _selection_rows(train: np.ndarray, y: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Rows used for model selection: all of the outer training set, or a stratified sample of
    `limit` of them on very large corpora (selection only needs to rank candidates)."""
    if len(train) <= limit:
        return train
    rng = np.random.default_rng(seed)
    keep = []
    for cls in (0, 1):
        rows = train[y[train] == cls]
        n = round(limit * len(rows) / len(train))
        keep.append(rng.choice(rows, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def _folds(n_splits: int, seed: int, y: np.ndarray, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds; with groups (identical texts), a group never straddles two folds, so a
    text's twin with the other label cannot be memorised in training and met in the test fold."""
    if groups is None:
        return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def _run_fold(r, k, train, test, feats, y, groups, inner_folds, seed, make_candidates, max_selection_rows):
    """Select on the inner folds of `train`, refit, predict `test`. Returns the outer
    predictions of every family's best setting and of the stack, and the fold's log."""
    t0 = time.perf_counter()
    fold_seed = seed + k + REPEAT_SEED_STEP * (r - 1)  # repeat 1 draws exactly what a single run draws
    sel = _selection_rows(train, y, max_selection_rows, fold_seed)
    inner = _folds(inner_folds, fold_seed, y[sel], None if groups is None else groups[sel])
    cands = make_candidates(len(train), seed)
    inner_pred, inner_auc = {}, {}
    for c in cands:
        pred = np.empty(len(sel))
        for itr, ite in inner:
            pred[ite] = _fit_predict(c, feats, y, sel[itr], sel[ite])
        inner_pred[c.name], inner_auc[c.name] = pred, roc_auc(y[sel], pred)
    best_of: dict[str, Candidate] = {}
    for c in cands:  # each family's best setting on the inner folds
        if c.family not in best_of or inner_auc[c.name] > inner_auc[best_of[c.family].name]:
            best_of[c.family] = c
    meta_inner = np.column_stack([_logit(inner_pred[c.name]) for c in best_of.values()])
    stack_pred = cross_val_predict(_stacker(), meta_inner, y[sel], cv=inner, method="predict_proba")[:, 1]
    inner_auc[STACK] = roc_auc(y[sel], stack_pred)

    outer_pred = {fam: _fit_predict(c, feats, y, train, test) for fam, c in best_of.items()}
    stacker = _stacker().fit(meta_inner, y[sel])
    outer_pred[STACK] = stacker.predict_proba(np.column_stack([_logit(p) for p in outer_pred.values()]))[:, 1]

    contenders = {fam: inner_auc[c.name] for fam, c in best_of.items()} | {STACK: inner_auc[STACK]}
    chosen = max(contenders, key=contenders.get)  # first listed wins ties
    log = {
        "repeat": r,
        "fold": k,
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "n_selection": int(len(sel)),
        "chosen_family": chosen,
        "chosen": STACK if chosen == STACK else best_of[chosen].name,
        "chosen_inner_auc": contenders[chosen],
        "inner_auc": {name: round(a, 4) for name, a in inner_auc.items()},
        "outer_auc": roc_auc(y[test], outer_pred[chosen]),
        "outer_auc_by_family": {fam: roc_auc(y[test], p) for fam, p in outer_pred.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return test, outer_pred, log


def nested_cv(
    feats: TextFeatures,
    y: np.ndarray,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    repeats: int = 1,
    make_candidates: Callable[[int, int], list[Candidate]] = candidates,
    max_selection_rows: int = 20_000,
    n_jobs: int | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    groups: np.ndarray | None = None,
) -> NestedResult:
    """Outer folds (of every repeat) run in parallel processes (`n_jobs`, default: one per CPU,
    at most folds x repeats). groups: samples that must share a fold (identical texts), or None."""
    y = np.asarray(y, dtype=np.int64)
    n_minority = int(min(y.sum(), len(y) - y.sum()))
    if n_minority < folds * inner_folds:
        raise InputError(
            f"too few samples for {folds}x{inner_folds} nested cross-validation: the smaller class "
            f"has {n_minority}; need at least {folds * inner_folds} (or lower --folds)"
        )
    if repeats < 1:
        raise InputError(f"cross-validation repeats must be at least 1, got {repeats}")
    total = folds * repeats
    n_jobs = min(total, n_jobs or len(os.sched_getaffinity(0)))
    jobs = (
        delayed(_run_fold)(r, k, train, test, feats, y, groups, inner_folds, seed, make_candidates, max_selection_rows)
        for r in range(1, repeats + 1)
        for k, (train, test) in enumerate(_folds(folds, seed + REPEAT_SEED_STEP * (r - 1), y, groups), 1)
    )
    scores, fold_of = np.zeros(len(y)), np.zeros(len(y), dtype=np.int64)
    family_scores: dict[str, np.ndarray] = {}
    fold_log = []
    for test, outer_pred, log in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs):
        if log["repeat"] == 1:
            fold_of[test] = log["fold"]
        scores[test] += outer_pred[log["chosen_family"]] / repeats  # each sample is tested once per repeat
        for fam, pred in outer_pred.items():
            family_scores.setdefault(fam, np.zeros(len(y)))[test] += pred / repeats
        fold_log.append(log)
        where = f"fold {log['fold']}/{folds}" + (f" of repeat {log['repeat']}/{repeats}" if repeats > 1 else "")
        progress(
            f"{where}: chose {log['chosen']} (inner AUC {log['chosen_inner_auc']:.3f}), "
            f"outer AUC {log['outer_auc']:.3f}, {log['seconds']:.1f}s  [{len(fold_log)}/{total} done]"
        )
    fold_log.sort(key=lambda f: (f["repeat"], f["fold"]))
    return NestedResult(scores=scores, family_scores=family_scores, folds=fold_log, fold_of=fold_of)
