"""How much of a body of text did the model see? The detector's flag rate is not the answer: at a
1% FPR threshold a clean corpus is still flagged at ~1%, and a detector with 40% TPR flags only
40% of true members. Rogan-Gladen corrects the observed flag rate p for both:

    pi = (p - FPR) / (TPR - FPR)        clipped to [0, 1]

TPR and FPR are the detector's operating point measured on held-out labelled samples, so they
are uncertain too. The CI propagates all three uncertainties: p, TPR and FPR are drawn from their
Jeffreys posteriors, Beta(k + 1/2, n - k + 1/2), which stay sensible when a count is 0 (a
resampling bootstrap would pretend an observed FPR of 0/40 is exactly 0), and the 2.5/97.5
percentiles of the corrected draws are the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OperatingPoint:
    """Detector counts at its threshold on held-out labelled samples."""

    tp: int  # members flagged
    n_pos: int  # members
    fp: int  # non-members flagged
    n_neg: int  # non-members

    @property
    def tpr(self) -> float:
        return self.tp / self.n_pos

    @property
    def fpr(self) -> float:
        return self.fp / self.n_neg

    @classmethod
    def measure(cls, flagged: np.ndarray, labels: np.ndarray) -> "OperatingPoint":
        flagged, labels = np.asarray(flagged, bool), np.asarray(labels)
        return cls(tp=int(flagged[labels == 1].sum()), n_pos=int((labels == 1).sum()),
                   fp=int(flagged[labels == 0].sum()), n_neg=int((labels == 0).sum()))


def rogan_gladen(p: np.ndarray | float, tpr: np.ndarray | float, fpr: np.ndarray | float) -> np.ndarray:
    p, tpr, fpr = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (p, tpr, fpr)))
    gap = tpr - fpr
    with np.errstate(divide="ignore", invalid="ignore"):
        pi = np.where(gap > 0, (p - fpr) / np.where(gap > 0, gap, 1.0), np.nan)
    return np.clip(pi, 0.0, 1.0)


def _jeffreys(rng: np.random.Generator, k: int, n: int, size: int) -> np.ndarray:
    return rng.beta(k + 0.5, n - k + 0.5, size)


def contaminated_fraction(flagged: int, n: int, op: OperatingPoint, draws: int = 4000, seed: int = 0) -> dict:
    """Estimated fraction of members among n documents of which `flagged` were flagged."""
    if n == 0:
        raise ValueError("no documents")
    if op.n_pos == 0 or op.n_neg == 0:
        raise ValueError("the operating point needs held-out members and non-members")
    rng = np.random.default_rng(seed)
    estimate = float(rogan_gladen(flagged / n, op.tpr, op.fpr))
    sims = rogan_gladen(_jeffreys(rng, flagged, n, draws), _jeffreys(rng, op.tp, op.n_pos, draws),
                        _jeffreys(rng, op.fp, op.n_neg, draws))
    sims = sims[~np.isnan(sims)]
    # without separation (TPR <= FPR) a flag says nothing about membership: no estimate
    estimable = op.tpr > op.fpr and len(sims) > 0.95 * draws
    lo, hi = (np.percentile(sims, [2.5, 97.5]) if estimable else (np.nan, np.nan))
    return {"n": n, "flagged": flagged, "flag_rate": flagged / n,
            "estimate": estimate if estimable else None,
            "ci": [float(lo), float(hi)] if estimable else None,
            "estimable": bool(estimable)}
