"""ROC-AUC with a bootstrap CI and TPR at fixed FPR, for binary member (1) / non-member (0) labels.

Conventions (stated in every report):
- Higher score = more likely a member.
- TPR at FPR x is *stepped*: the highest TPR of any threshold whose empirical FPR is <= x
  (no interpolation between ROC points, so it never claims more than some threshold achieves).
- A TPR at FPR x is flagged "not estimable" when there are fewer than 10/x non-members: below
  that, x corresponds to under ten false positives and the number is mostly noise.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

DEFAULT_FPRS = (0.001, 0.01, 0.05)
MIN_FALSE_POSITIVES = 10


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (non-member) or 1 (member)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    y = y.astype(np.int8)
    if y.min() == y.max():
        raise ValueError("ROC needs both members (1) and non-members (0)")
    return y, s


def roc_auc(labels, scores) -> float:
    """Mann-Whitney AUC: P(score of a member > score of a non-member), ties count one half."""
    y, s = _check(labels, scores)
    ranks = rankdata(s)
    n1 = int(y.sum())
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc_ci(labels, scores, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the AUC under a stratified bootstrap (members and non-members resampled
    separately, so every resample keeps both classes and the class sizes).

    Each resample costs O(n): negatives are sorted once, and each member's share of negatives
    below it is read from a cumulative sum of the resampled negative counts."""
    y, s = _check(labels, scores)
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    n1, n0 = len(pos), len(neg)
    lo_idx = np.searchsorted(neg, pos, side="left")  # negatives strictly below each member
    hi_idx = np.searchsorted(neg, pos, side="right")  # ... plus ties
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        neg_counts = np.bincount(rng.integers(0, n0, n0), minlength=n0)
        cum = np.concatenate(([0], np.cumsum(neg_counts)))
        below = cum[lo_idx] + 0.5 * (cum[hi_idx] - cum[lo_idx])
        pos_counts = np.bincount(rng.integers(0, n1, n1), minlength=n1)
        aucs[b] = (pos_counts * below).sum() / (n1 * n0)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def corrected_cv_interval(centre: float, fold_aucs, test_train_ratio: float, level: float = 0.95) -> tuple[float, float]:
    """A t-interval around `centre` from the AUCs of J cross-validation folds (possibly several
    repetitions of k folds), with Nadeau & Bengio's (2003) correction: the variance of their mean
    is (1/J + n_test/n_train) x their variance, not 1/J of it, because the folds' training sets
    overlap. A bootstrap over fixed out-of-fold scores misses this variance of the fitting itself,
    which on a few hundred samples is the larger part."""
    from scipy.stats import t

    a = np.asarray(fold_aucs, dtype=np.float64)
    if len(a) < 2:
        raise ValueError("the corrected CV interval needs at least two folds")
    half = t.ppf(0.5 + level / 2, len(a) - 1) * math.sqrt((1 / len(a) + test_train_ratio) * a.var(ddof=1))
    return max(0.0, centre - half), min(1.0, centre + half)


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC (fpr, tpr), one point per distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[last_of_tie]
    fp = np.cumsum(1 - y_sorted)[last_of_tie]
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (len(y) - y.sum())]
    return fpr, tpr


def tpr_at_fpr(labels, scores, fpr: float) -> float:
    """Stepped convention: best TPR over thresholds with empirical FPR <= fpr."""
    fprs, tprs = roc_points(labels, scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def min_negatives_for(fpr: float) -> int:
    return math.ceil(MIN_FALSE_POSITIVES / fpr - 1e-9)


def summarize(labels, scores, fprs=DEFAULT_FPRS, n_boot: int = 1000, seed: int = 0) -> dict:
    """The metrics block written to metrics.json for one score."""
    y, s = _check(labels, scores)
    n0 = int((y == 0).sum())
    lo, hi = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed)
    return {
        "n": int(len(y)),
        "n_members": int(y.sum()),
        "n_nonmembers": n0,
        "auc": roc_auc(y, s),
        "auc_ci": [lo, hi],
        "tpr_at_fpr": {str(f): tpr_at_fpr(y, s, f) for f in fprs},
        "tpr_at_fpr_estimable": {str(f): n0 >= min_negatives_for(f) for f in fprs},
        "tpr_convention": "stepped",
    }
