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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
from sklearn.base import clone
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


class Split:
    """One training / test split of a fold."""

    def __init__(self, feats: TextFeatures, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int):
        self.feats, self.y, self.train, self.test, self.seed = feats, y, train, test, seed

    def fit_predict(self, group: list[Candidate]) -> dict[str, np.ndarray]:
        """Each candidate's predictions for the test rows, by name. The group shares its inputs
        (group_key): the vocabulary is fitted on the training rows (or the stratified sample of
        them that `max_rows` allows) once, and the rows are read through it once."""
        c = group[0]
        X = self.feats.block(c.block)
        rows = self.train if c.max_rows is None else _selection_rows(self.train, self.y, c.max_rows, self.seed)
        if c.vocabulary is None:
            X_train, X_test = X[rows], X[self.test]
        else:
            v = clone(c.vocabulary).fit_rows(X, rows)
            X_train, X_test = v.transform_rows(X, rows), v.transform_rows(X, self.test)
        out = {}
        for c in group:
            model = c.build().fit(X_train, self.y[rows])
            out[c.name] = model.predict_proba(X_test)[:, 1]
        return out


def group_key(c: Candidate) -> tuple:
    """Candidates with the same key read the same inputs: one work item fits them all."""
    if c.vocabulary is None:
        return c.block, c.max_rows, c.name
    return c.block, c.max_rows, type(c.vocabulary), tuple(sorted(c.vocabulary.get_params().items()))


def _groups(cands: list[Candidate]) -> list[list[Candidate]]:
    groups: dict[tuple, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(group_key(c), []).append(c)
    return list(groups.values())


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


class Fold:
    """One outer fold: selection on the inner folds of its training rows, then each family's best
    setting refitted on all of them and a stack over those. Its work comes in items (a split x a
    group of candidates that share inputs) that any worker thread can run: inner items first,
    the refits (`outer_items`) once every inner item is done."""

    def __init__(self, r, k, train, test, feats, y, groups, inner_folds, seed, make_candidates, max_selection_rows):
        self.r, self.k, self.train, self.test, self.feats, self.y = r, k, train, test, feats, y
        self.started = None
        self.seed = seed + k + REPEAT_SEED_STEP * (r - 1)  # repeat 1 draws exactly what a single run draws
        self.sel = _selection_rows(train, y, max_selection_rows, self.seed)
        self.inner = _folds(inner_folds, self.seed, y[self.sel], None if groups is None else groups[self.sel])
        self.cands = make_candidates(len(train), seed)
        self.inner_pred = {c.name: np.empty(len(self.sel)) for c in self.cands}
        self.outer_pred: dict[str, np.ndarray] = {}
        self.refitting = False
        self.pending = 0  # work items handed out and not yet done

    def inner_items(self) -> list[Callable[[], None]]:
        items, groups = [], _groups(self.cands)
        for itr, ite in self.inner:
            split = Split(self.feats, self.y, self.sel[itr], self.sel[ite], self.seed)
            items += [partial(self._inner, split, ite, group) for group in groups]
        self.pending = len(items)
        return items

    def _inner(self, split: Split, ite: np.ndarray, group: list[Candidate]) -> None:
        self.started = self.started or time.perf_counter()
        for name, pred in split.fit_predict(group).items():
            self.inner_pred[name][ite] = pred

    def outer_items(self) -> list[Callable[[], None]]:
        """After the inner items: each family's best setting on the inner folds, refitted."""
        self.inner_auc = {name: roc_auc(self.y[self.sel], pred) for name, pred in self.inner_pred.items()}
        self.best_of: dict[str, Candidate] = {}
        for c in self.cands:
            if c.family not in self.best_of or self.inner_auc[c.name] > self.inner_auc[self.best_of[c.family].name]:
                self.best_of[c.family] = c
        split = Split(self.feats, self.y, self.train, self.test, self.seed)
        groups = _groups(list(self.best_of.values()))
        self.refitting, self.pending = True, len(groups)
        return [partial(self._outer, split, group) for group in groups]

    def _outer(self, split: Split, group: list[Candidate]) -> None:
        preds = split.fit_predict(group)
        for c in group:
            self.outer_pred[c.family] = preds[c.name]

    def result(self) -> tuple[np.ndarray, dict, dict]:
        """After the outer items: the test rows, every family's and the stack's predictions, the log."""
        y, sel, inner = self.y, self.sel, self.inner
        meta_inner = np.column_stack([_logit(self.inner_pred[c.name]) for c in self.best_of.values()])
        stack_pred = cross_val_predict(_stacker(), meta_inner, y[sel], cv=inner, method="predict_proba")[:, 1]
        inner_auc = self.inner_auc | {STACK: roc_auc(y[sel], stack_pred)}
        outer_pred = {fam: self.outer_pred[fam] for fam in self.best_of}
        stacker = _stacker().fit(meta_inner, y[sel])
        outer_pred[STACK] = stacker.predict_proba(np.column_stack([_logit(p) for p in outer_pred.values()]))[:, 1]
        contenders = {fam: inner_auc[c.name] for fam, c in self.best_of.items()} | {STACK: inner_auc[STACK]}
        chosen = max(contenders, key=contenders.get)  # first listed wins ties
        log = {
            "repeat": self.r,
            "fold": self.k,
            "n_train": int(len(self.train)),
            "n_test": int(len(self.test)),
            "n_selection": int(len(sel)),
            "chosen_family": chosen,
            "chosen": STACK if chosen == STACK else self.best_of[chosen].name,
            "chosen_inner_auc": contenders[chosen],
            "inner_auc": {name: round(a, 4) for name, a in inner_auc.items()},
            "outer_auc": roc_auc(y[self.test], outer_pred[chosen]),
            "outer_auc_by_family": {fam: roc_auc(y[self.test], p) for fam, p in outer_pred.items()},
            "seconds": round(time.perf_counter() - self.started, 2),  # from its first work item to its last
        }
        return self.test, outer_pred, log


def _run(folds: list[Fold], n_jobs: int, done: Callable[[Fold], None]) -> None:
    """Every fold's work items on `n_jobs` threads (the fits and the compiled loops release the
    GIL): a fold's refits as soon as its selection is done, before any later fold's selection, so
    folds finish one after another and no thread idles while work is left. `done(fold)` runs in
    this thread as each fold finishes; a failed item raises here."""
    queue = [(fold, item) for fold in folds for item in fold.inner_items()]
    running: dict = {}
    with ThreadPoolExecutor(n_jobs) as pool:
        while queue or running:
            while queue and len(running) < n_jobs:
                fold, item = queue.pop(0)
                running[pool.submit(item)] = fold
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                fold = running.pop(future)
                future.result()
                fold.pending -= 1
                if fold.pending == 0 and not fold.refitting:
                    queue[:0] = [(fold, item) for item in fold.outer_items()]
                elif fold.pending == 0:
                    done(fold)


def nested_cv(
    feats: TextFeatures,
    y: np.ndarray,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    repeats: int = 1,
    make_candidates: Callable[[int, int], list[Candidate]] = candidates,
    max_selection_rows: int = 10_000,
    n_jobs: int | None = None,
    progress: Callable[[str], None] = lambda msg: None,
    groups: np.ndarray | None = None,
) -> NestedResult:
    """Outer folds (of every repeat) are worked on by `n_jobs` threads (default: one per CPU).
    groups: samples that must share a fold (identical texts), or None."""
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
    plan = [Fold(r, k, train, test, feats, y, groups, inner_folds, seed, make_candidates, max_selection_rows)
            for r in range(1, repeats + 1)
            for k, (train, test) in enumerate(_folds(folds, seed + REPEAT_SEED_STEP * (r - 1), y, groups), 1)]
    scores, fold_of = np.zeros(len(y)), np.zeros(len(y), dtype=np.int64)
    family_scores: dict[str, np.ndarray] = {}
    fold_log = []

    def done(fold: Fold) -> None:
        test, outer_pred, log = fold.result()
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

    with warnings.catch_warnings():  # here, not in the threads: the warning filters are the process's
        # a weakly regularised fit may stop before full convergence; selection judges it by its
        # held-out AUC like any other candidate, so the warning would only be noise
        warnings.simplefilter("ignore", ConvergenceWarning)
        _run(plan, n_jobs or len(os.sched_getaffinity(0)), done)
    fold_log.sort(key=lambda f: (f["repeat"], f["fold"]))
    return NestedResult(scores=scores, family_scores=family_scores, folds=fold_log, fold_of=fold_of)
