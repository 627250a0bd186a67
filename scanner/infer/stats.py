"""The set-level test of dataset inference (Maini et al., "LLM Dataset Inference", 2024), on
per-sample feature vectors of a suspect set and of a reference set known to be unseen.

One split: each set is cut at random into halves. A regularised logistic regression (suspect =
1, reference = 0; standardised features, strong L2) is fitted on the first halves and scores the
second halves; a one-sided Welch t-test asks whether the suspect half scores higher. Under the
null (both sets from one distribution, neither seen) the second halves are i.i.d. given the fit,
so each split's p-value is valid.

Many splits: one split's p-value depends on the luck of the cut, so the test repeats it and
combines the p-values with the Cauchy combination (Liu & Xie 2020, "Cauchy combination test"):
T = mean(tan((1/2 - p_i) pi)), p = 1/2 - arctan(T) / pi. It stays valid for dependent p-values
(the splits share samples) without estimating their correlation; it is exact for small p under
any dependence of Gaussian type and close to nominal at alpha = 0.05 (tests/test_infer.py measures
the rejection rate under the null). Twice the median is valid under any dependence but wastes
half the alpha; the Cauchy combination keeps the power of the best splits.

How much was seen, without labelled members: the suspect set's held-out scores are a mixture,
pi x members + (1 - pi) x (the reference's distribution), so for every threshold t the shares
above it obey S_suspect(t) <= pi + (1 - pi) S_reference(t), i.e.
pi >= (S_suspect(t) - S_reference(t)) / (1 - S_reference(t)), whatever the members' scores. With
the one-sided DKW bound (Massart) on both empirical shares this is a lower confidence bound that
holds for all t at once. Per split at level alpha/2 and the median over splits: valid at alpha
(more than half the splits' bounds can exceed pi only with probability <= 2 x alpha/2). It needs
no detector, but it is only a lower bound, and weak: ~200 held-out samples per set leave a DKW
margin of ~0.1 on each share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_SPLITS = 10
# Strong L2: a fit on a few hundred samples over ~25 correlated features is mostly noise at C=1;
# at C=0.01 the weights follow each feature's own association with the set (measured on the
# tests' tiny GPT-2: p-values 10-30x smaller at C=0.01 than at C=1, same data). As n grows the
# data outweighs the penalty.
REGULARISATION = 0.01


SEEN_BOUND_LEVEL = 0.95


@dataclass
class SetTest:
    p_value: float
    splits: list[dict]  # per split: t, p, mean difference, Cohen's d, held-out sizes, seen lower bound
    effect_size: float  # median Cohen's d of the held-out scores over the splits
    seen_at_least: float  # lower confidence bound (SEEN_BOUND_LEVEL) on the suspect set's seen fraction
    held_out: dict = field(default_factory=dict)  # the first split's held-out scores, for the histogram

    def to_dict(self) -> dict:
        return {"p_value": self.p_value, "effect_size": self.effect_size, "splits": self.splits,
                "combination": "Cauchy combination of the splits' one-sided Welch t-test p-values",
                "seen_at_least": self.seen_at_least, "seen_at_least_level": SEEN_BOUND_LEVEL}


def cauchy_combination(p_values) -> float:
    p = np.clip(np.asarray(p_values, dtype=float), 1e-300, 1 - 1e-16)
    t = np.mean(1 / np.tan(p * np.pi))  # = tan((1/2 - p) pi), without losing a tiny p to 1/2 - p
    if t > 1e15:  # arctan's tail: 1/2 - arctan(t)/pi -> 1/(pi t), without cancellation
        return float(1 / (np.pi * t))
    return float(0.5 - np.arctan(t) / np.pi)


def seen_lower_bound(suspect_scores: np.ndarray, reference_scores: np.ndarray, alpha: float) -> float:
    """A lower confidence bound (level 1 - alpha) on the share of the suspect scores drawn from
    something other than the reference's distribution (see the module)."""
    s, r = np.sort(suspect_scores), np.sort(reference_scores)
    eps_s, eps_r = (np.sqrt(np.log(2 / alpha) / (2 * len(x))) for x in (s, r))  # alpha/2 for each set
    t = np.unique(np.r_[s, r])
    above_s = 1 - np.searchsorted(s, t, side="right") / len(s)
    above_r = np.minimum(1.0, 1 - np.searchsorted(r, t, side="right") / len(r) + eps_r)
    ok = above_r < 1
    bound = (above_s[ok] - eps_s - above_r[ok]) / (1 - above_r[ok])
    return float(max(0.0, bound.max(initial=0.0)))


def _halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2:]


def one_split(suspect: np.ndarray, reference: np.ndarray, rng: np.random.Generator) -> tuple[dict, np.ndarray, np.ndarray]:
    (fs, ts), (fr, tr) = _halves(len(suspect), rng), _halves(len(reference), rng)
    X = np.vstack([suspect[fs], reference[fr]])
    y = np.r_[np.ones(len(fs)), np.zeros(len(fr))]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=REGULARISATION, max_iter=5000)).fit(X, y)
    s, r = model.decision_function(suspect[ts]), model.decision_function(reference[tr])
    t = stats.ttest_ind(s, r, equal_var=False, alternative="greater")
    pooled = np.sqrt(((len(s) - 1) * s.var(ddof=1) + (len(r) - 1) * r.var(ddof=1)) / (len(s) + len(r) - 2))
    d = float((s.mean() - r.mean()) / pooled) if pooled > 0 else 0.0
    d_se = np.sqrt((len(s) + len(r)) / (len(s) * len(r)) + d * d / (2 * (len(s) + len(r))))  # Hedges & Olkin
    return ({"t": float(t.statistic), "p": float(t.pvalue), "mean_difference": float(s.mean() - r.mean()),
             "cohens_d": d, "cohens_d_ci": [d - 1.96 * d_se, d + 1.96 * d_se], "n_suspect": len(s), "n_reference": len(r),
             "seen_at_least": seen_lower_bound(s, r, (1 - SEEN_BOUND_LEVEL) / 2)}, s, r)


def set_test(suspect: np.ndarray, reference: np.ndarray, seed: int = 0, splits: int = DEFAULT_SPLITS) -> SetTest:
    """suspect, reference: (n, features) arrays, one row per sample."""
    suspect, reference = np.asarray(suspect, float), np.asarray(reference, float)
    if min(len(suspect), len(reference)) < 8:
        raise ValueError(f"the test needs at least 8 samples per set (suspect {len(suspect)}, reference {len(reference)})")
    rng = np.random.default_rng(seed)
    results, held = [], {}
    for i in range(splits):
        r, s_scores, r_scores = one_split(suspect, reference, rng)
        results.append(r)
        if i == 0:
            held = {"suspect": s_scores.tolist(), "reference": r_scores.tolist()}
    return SetTest(p_value=cauchy_combination([r["p"] for r in results]), splits=results,
                   effect_size=float(np.median([r["cohens_d"] for r in results])),
                   seen_at_least=float(np.median([r["seen_at_least"] for r in results])), held_out=held)
