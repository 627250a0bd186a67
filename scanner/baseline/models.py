"""The baseline's model families: scikit-learn estimators over one feature block each.

Every learnt quantity (vocabulary, IDF, year cutoff, n-gram rules) is fitted in `fit`, so the
nested cross-validation in nested.py fits them on training rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize


class FoldVocabulary(BaseEstimator, TransformerMixin):
    """TF-IDF over hashed counts, with vocabulary and IDF learnt from the rows it is fitted on.

    Keeps columns seen in at least `min_df` fitted documents (the `max_features` most frequent
    of them, if set); `weighting` is "tfidf" (sublinear tf x idf, l2 rows) or "counts"."""

    def __init__(self, min_df: int = 2, max_features: int | None = None, weighting: str = "tfidf"):
        self.min_df = min_df
        self.max_features = max_features
        self.weighting = weighting

    def fit(self, X, y=None):
        X = sp.csr_matrix(X)
        df = np.bincount(X.indices, minlength=X.shape[1])
        cols = np.flatnonzero(df >= self.min_df)
        if self.max_features is not None and len(cols) > self.max_features:
            top = np.argsort(-df[cols], kind="stable")[: self.max_features]
            cols = np.sort(cols[top])
        if len(cols) == 0:  # nothing repeats: keep every seen column rather than fit on nothing
            cols = np.flatnonzero(df)
        self.columns_ = cols
        self.idf_ = np.log((1 + X.shape[0]) / (1 + df[cols])) + 1.0
        return self

    def transform(self, X):
        Xs = sp.csr_matrix(X)[:, self.columns_].astype(np.float64)
        if self.weighting == "counts":
            return Xs
        Xs.data = np.log1p(Xs.data)
        return normalize(Xs @ sp.diags(self.idf_))


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
        X = sp.csr_matrix(X, copy=True)  # presence only; the caller's matrix stays as it is
        X.data[:] = 1
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        self.rules_ = {c: self._select(X, y == c) for c in (1, 0)}
        return self

    def _select(self, X: sp.csr_matrix, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # only n-grams with enough support in the target class can ever be picked: work on those
        support = np.flatnonzero(np.bincount(X[target].indices, minlength=X.shape[1]) >= self.min_support)
        Xt, Xo = X[target][:, support].tocsr(), X[~target][:, support].tocsr()
        Xt_csc, Xo_csc = Xt.tocsc(), Xo.tocsc()
        tp = np.bincount(Xt.indices, minlength=len(support)).astype(np.int64)
        fp = np.bincount(Xo.indices, minlength=len(support)).astype(np.int64)
        n_t, n_o = max(Xt.shape[0], 1), max(Xo.shape[0], 1)
        budget = int(np.floor(self.fpr_budget * Xo.shape[0]))
        covered_t = np.zeros(Xt.shape[0], dtype=bool)
        covered_o = np.zeros(Xo.shape[0], dtype=bool)
        cols, weights, used_fp = [], [], 0
        for _ in range(self.max_rules):
            ok = (tp >= self.min_support) & (used_fp + fp <= budget) & (tp / n_t > fp / n_o)
            if not ok.any():
                break
            # newly covered documents per new false hit: pure rules first, broad ones when cheap
            j = int(np.argmax(np.where(ok, tp / (fp + 1.0), -np.inf)))
            cols.append(int(support[j]))
            weights.append(np.log((tp[j] / n_t + 1e-3) / (fp[j] / n_o + 1e-3)))
            used_fp += int(fp[j])
            # drop the newly covered documents from the counts, so later rules add new coverage
            docs_t = Xt_csc.indices[Xt_csc.indptr[j]:Xt_csc.indptr[j + 1]]
            docs_o = Xo_csc.indices[Xo_csc.indptr[j]:Xo_csc.indptr[j + 1]]
            new_t, new_o = docs_t[~covered_t[docs_t]], docs_o[~covered_o[docs_o]]
            covered_t[new_t] = True
            covered_o[new_o] = True
            tp -= np.bincount(Xt[new_t].indices, minlength=len(tp))
            fp -= np.bincount(Xo[new_o].indices, minlength=len(fp))
        order = np.argsort(cols)  # decision_function slices columns in ascending order
        return np.array(cols, dtype=np.int64)[order], np.array(weights)[order]

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
    """One model family with one hyper-parameter setting, reading one feature block."""

    family: str
    params: dict
    block: str
    build: Callable[[], BaseEstimator] = field(compare=False)

    @property
    def name(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}({args})"


def candidates(n_train: int, seed: int) -> list[Candidate]:
    """The search space. Sizes adapt to the data so a 100k-document run stays in minutes."""
    large = n_train > 20_000
    trees, forest_vocab, depth = (100, 5_000, 30) if large else (300, 20_000, None)
    out = []
    for alpha in (0.03, 0.3):
        out.append(Candidate("naive_bayes", {"alpha": alpha}, "word",
                             lambda a=alpha: make_pipeline(FoldVocabulary(), MultinomialNB(alpha=a))))
    for block in ("word", "char"):
        for C in (1.0, 10.0, 100.0):
            out.append(Candidate(f"logreg_{block}", {"C": C}, block,
                                 lambda C=C: make_pipeline(FoldVocabulary(), LogisticRegression(C=C, solver="liblinear", dual=True, tol=1e-3))))
    out.append(Candidate("random_forest", {"trees": trees, "vocab": forest_vocab}, "word",
                         lambda: make_pipeline(
                             FoldVocabulary(max_features=forest_vocab, weighting="counts"),
                             RandomForestClassifier(n_estimators=trees, max_features="sqrt", max_depth=depth, random_state=seed,
                                                    max_samples=min(1.0, 10_000 / max(n_train, 1))))))
    out.append(Candidate("date", {}, "year", YearRule))
    for budget in (0.01, 0.05):
        out.append(Candidate("greedy_ngrams", {"fpr_budget": budget}, "word",
                             lambda b=budget: GreedyNgramRules(fpr_budget=b)))
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
    trees = 100 if n_train > 20_000 else 300
    out.append(Candidate("random_forest_img_all", {"trees": trees}, "img_all",
                         lambda: RandomForestClassifier(n_estimators=trees, max_features="sqrt", random_state=seed,
                                                        max_samples=min(1.0, 10_000 / max(n_train, 1)))))
    return out


def image_text_candidates(n_train: int, seed: int) -> list[Candidate]:
    return image_candidates(n_train, seed) + candidates(n_train, seed)
