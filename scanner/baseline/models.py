"""The baseline's model families: scikit-learn estimators over one feature block each.

Every learnt quantity (vocabulary, IDF, year cutoff, n-gram rules) is fitted in `fit`, so the
nested cross-validation in nested.py fits them on training rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scanner.baseline.vocabulary import FoldVocabulary

# Outer training sets larger than this get the search space's large-corpus settings.
LARGE_TRAIN = 20_000
FOREST_ROWS = 20_000


class AveragedSGDLogistic(BaseEstimator, ClassifierMixin):
    """L2-regularised logistic regression by averaged stochastic gradient descent, for large
    corpora: liblinear's objective (C x the summed log-loss + |w|^2 / 2) divided by C x n, so C
    means what it means to LogisticRegression. A fixed `epochs` passes over the rows: on 80,000
    documents' character n-grams liblinear needed 15-56 passes (6-18 s) for the AUC that 5
    averaged passes reach within 0.001-0.002 (1.7 s). Weakly regularised, 5 passes stop short of
    the optimum's size, not its direction (tests/test_baseline.py)."""

    def __init__(self, C: float = 1.0, epochs: int = 5, seed: int = 0):
        self.C = C
        self.epochs = epochs
        self.seed = seed

    def fit(self, X, y):
        self.model_ = SGDClassifier(loss="log_loss", alpha=1.0 / (self.C * X.shape[0]), average=True,
                                    max_iter=self.epochs, tol=None, random_state=self.seed).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(X)


class YearRule(BaseEstimator, ClassifierMixin):
    """Date detection: members and non-members often come from different periods.

    Input: one column, the largest plausible year in the text (0 = none). Learns from the
    training rows the cutoff year (and its direction) that best separates the classes, then a
    logistic model on (has a year, year, past the cutoff)."""

    def fit(self, X, y):
        year = np.asarray(X, dtype=np.float64)[:, 0]
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        best = (-1.0, 0.0)
        for cut in np.unique(year[year > 0]):
            after = year >= cut
            # distance from chance of the balanced accuracy of "after the cutoff = non-member":
            # the same cutoff in the other direction scores the same, the logistic model picks the sign
            bacc = 0.5 * (after[y == 0].mean() + (~after[y == 1]).mean())
            best = max(best, (abs(bacc - 0.5), float(cut)))
        self.cutoff_ = best[1]
        self.model_ = LogisticRegression(C=1.0).fit(self._design(year), y)
        return self

    def _design(self, year: np.ndarray) -> np.ndarray:
        has = year > 0
        centred = np.where(has, (year - 2000.0) / 50.0, 0.0)
        return np.c_[has, centred, has & (year >= self.cutoff_)].astype(np.float64)

    def predict_proba(self, X):
        return self.model_.predict_proba(self._design(np.asarray(X, dtype=np.float64)[:, 0]))


@numba.njit(cache=True, nogil=True)
def _greedy_rules(indptr, indices, target, n_cols, min_support, fpr_budget, max_rules):
    """GreedyNgramRules' selection for the `target` rows: (columns in ascending order, weights).
    Compiled: as numpy passes over every candidate column per rule it took 2 s per class on
    80,000 documents."""
    n, n_target = len(target), target.sum()
    tp, fp = np.zeros(n_cols, dtype=np.int64), np.zeros(n_cols, dtype=np.int64)
    for r in range(n):
        for j in range(indptr[r], indptr[r + 1]):
            if target[r]:
                tp[indices[j]] += 1
            else:
                fp[indices[j]] += 1
    n_t, n_o = max(n_target, 1), max(n - n_target, 1)
    budget = np.floor(fpr_budget * (n - n_target))
    # only n-grams with enough support in the target class can ever be picked: work on those
    support = np.flatnonzero(tp >= min_support)
    at = np.full(n_cols, -1, dtype=np.int64)
    at[support] = np.arange(len(support))
    tp, fp = tp[support], fp[support]
    col_ptr = np.zeros(len(support) + 1, dtype=np.int64)  # each supported column's rows (CSC)
    col_ptr[1:] = np.cumsum(tp + fp)
    col_rows, filled = np.empty(col_ptr[-1], dtype=np.int64), col_ptr[:-1].copy()
    for r in range(n):
        for j in range(indptr[r], indptr[r + 1]):
            s = at[indices[j]]
            if s >= 0:
                col_rows[filled[s]] = r
                filled[s] += 1
    covered = np.zeros(n, dtype=np.bool_)
    cols, weights, used_fp = [], [], 0
    active, n_active = np.arange(len(support)), len(support)  # tp only falls: a column below support leaves
    for _ in range(max_rules):
        # newly covered documents per new false hit: pure rules first, broad ones when cheap.
        # In whole numbers: tp / n_t > fp / n_o, and tp / (fp + 1) > the best's, the first best kept
        best, kept = -1, 0
        for a in range(n_active):
            s = active[a]
            if tp[s] < min_support:
                continue
            active[kept] = s
            kept += 1
            if used_fp + fp[s] <= budget and tp[s] * n_o > fp[s] * n_t and (
                    best < 0 or tp[s] * (fp[best] + 1) > tp[best] * (fp[s] + 1) or (
                    tp[s] * (fp[best] + 1) == tp[best] * (fp[s] + 1) and s < best)):
                best = s
        n_active = kept
        if best < 0:
            break
        cols.append(support[best])
        weights.append(np.log((tp[best] / n_t + 1e-3) / (fp[best] / n_o + 1e-3)))
        used_fp += fp[best]
        # drop the newly covered documents from the counts, so later rules add new coverage
        for k in range(col_ptr[best], col_ptr[best + 1]):
            r = col_rows[k]
            if not covered[r]:
                covered[r] = True
                for j in range(indptr[r], indptr[r + 1]):
                    s = at[indices[j]]
                    if s >= 0:
                        if target[r]:
                            tp[s] -= 1
                        else:
                            fp[s] -= 1
    cols_out, weights_out = np.array(cols, dtype=np.int64), np.array(weights, dtype=np.float64)
    order = np.argsort(cols_out)  # decision_function slices columns in ascending order
    return cols_out[order], weights_out[order]


class GreedyNgramRules(BaseEstimator, ClassifierMixin):
    """Greedy n-gram selection at an FPR budget (the Blind-MIA idea).

    For each class, repeatedly picks the n-gram that covers the most not-yet-covered documents
    of that class while the documents of the other class it covers stay within
    `fpr_budget` of that class. A document's score is the log-odds weight of the strongest
    member rule it contains minus that of the strongest non-member rule."""

    def __init__(self, fpr_budget: float = 0.05, min_support: int = 3, max_rules: int = 500):
        self.fpr_budget = fpr_budget
        self.min_support = min_support
        self.max_rules = max_rules

    def fit(self, X, y):
        X = sp.csr_matrix(X)  # presence only: which columns each row has
        if not X.has_canonical_format:
            X = X.copy()
            X.sum_duplicates()
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        self.rules_ = {c: _greedy_rules(X.indptr, X.indices, y == c, X.shape[1], self.min_support, self.fpr_budget,
                                        self.max_rules) for c in (1, 0)}
        return self

    def decision_function(self, X):
        X = sp.csr_matrix(X)
        score = np.zeros(X.shape[0])
        for c, sign in ((1, 1.0), (0, -1.0)):
            cols, w = self.rules_[c]
            if len(cols):
                hits = X[:, cols].tocsr()
                hits.data = w[hits.indices]  # hits.indices are positions in cols
                strongest = np.asarray(hits.max(axis=1).todense()).ravel()
                score += sign * strongest
        return score

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-self.decision_function(X)))
        return np.c_[1 - p, p]


@dataclass(frozen=True)
class Candidate:
    """One model family with one hyper-parameter setting, reading one feature block: `build()`
    makes the estimator; with a `vocabulary`, that estimator reads the block through it (fitted
    on the same training rows), and candidates with equal vocabularies share one fit per split."""

    family: str
    params: dict
    block: str
    build: Callable[[], BaseEstimator] = field(compare=False)
    vocabulary: FoldVocabulary | None = field(default=None, compare=False)
    max_rows: int | None = None  # fitted on a stratified sample of at most this many training rows

    @property
    def name(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}({args})"


def candidates(n_train: int, seed: int) -> list[Candidate]:
    """The search space. Sizes adapt to the data so a 100k-document run stays within a minute
    on 2 cores: past LARGE_TRAIN training rows the logistic models are fitted by averaged SGD
    and the forest is smaller."""
    large = n_train > LARGE_TRAIN
    trees, forest_vocab, depth = (100, 5_000, 30) if large else (300, 20_000, None)
    tfidf = FoldVocabulary()
    out = []
    for alpha in (0.03, 0.3):
        out.append(Candidate("naive_bayes", {"alpha": alpha}, "word", lambda a=alpha: MultinomialNB(alpha=a), tfidf))
    for block in ("word", "char"):
        for C in (1.0, 10.0, 100.0):
            if large:
                out.append(Candidate(f"logreg_{block}", {"C": C, "solver": "sgd"}, block,
                                     lambda C=C: AveragedSGDLogistic(C=C, seed=seed), tfidf))
            else:
                out.append(Candidate(f"logreg_{block}", {"C": C}, block,
                                     lambda C=C: LogisticRegression(C=C, solver="liblinear", dual=True, tol=1e-3), tfidf))
    # a forest's fit grows with every training row, not only the ones each tree samples: on large
    # corpora it is grown on a stratified sample of its training rows (the stack lost 0.0001 AUC)
    rows = FOREST_ROWS if large else None
    out.append(Candidate("random_forest", {"trees": trees, "vocab": forest_vocab} | ({"rows": rows} if rows else {}), "word",
                         lambda: RandomForestClassifier(n_estimators=trees, max_features="sqrt", max_depth=depth,
                                                        random_state=seed, max_samples=min(1.0, 10_000 / max(n_train, 1))),
                         FoldVocabulary(max_features=forest_vocab, weighting="counts"), rows))
    out.append(Candidate("date", {}, "year", YearRule))
    supported = FoldVocabulary(min_df=GreedyNgramRules().min_support, weighting="counts")  # no rarer n-gram is ever picked
    for budget in (0.01, 0.05):
        out.append(Candidate("greedy_ngrams", {"fpr_budget": budget}, "word",
                             lambda b=budget: GreedyNgramRules(fpr_budget=b), supported))
    return out


def image_candidates(n_train: int, seed: int) -> list[Candidate]:
    """The image blocks' search space (scanner.baseline.image_features), added to the caption's
    text candidates for image-text samples: a logistic model per block, and a forest over all
    image features together."""
    from scanner.baseline.image_features import BLOCKS

    out = []
    for block in BLOCKS:
        for C in (0.1, 1.0):
            out.append(Candidate(f"logreg_{block}", {"C": C}, block,
                                 lambda C=C: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))))
    trees = 100 if n_train > LARGE_TRAIN else 300
    out.append(Candidate("random_forest_img_all", {"trees": trees}, "img_all",
                         lambda: RandomForestClassifier(n_estimators=trees, max_features="sqrt", random_state=seed,
                                                        max_samples=min(1.0, 10_000 / max(n_train, 1)))))
    return out


def image_text_candidates(n_train: int, seed: int) -> list[Candidate]:
    return image_candidates(n_train, seed) + candidates(n_train, seed)
