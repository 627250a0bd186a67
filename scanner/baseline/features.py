"""Text features for the model-free baseline.

Everything computed here is *stateless* (a hash of each document on its own), so it can be
computed once for the whole corpus without leaking anything across folds. Whatever is learnt
from data (vocabulary, document frequencies, IDF, year cutoffs) lives in the estimators of
models.py and is fitted on training folds only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.feature_extraction.text import HashingVectorizer

HASH_FEATURES = 1 << 20
# Years a text may plausibly mention; a fixed range so features never depend on today's date.
YEAR_MIN, YEAR_MAX = 1000, 2099
_YEAR = re.compile(r"(?<![\d.,])(1\d{3}|20\d{2})(?!\d|[.,]\d)")


def _hasher(analyzer: str, ngram_range: tuple[int, int]) -> HashingVectorizer:
    return HashingVectorizer(
        analyzer=analyzer,
        ngram_range=ngram_range,
        n_features=HASH_FEATURES,
        alternate_sign=False,
        norm=None,
        lowercase=True,
        dtype=np.float32,
    )


WORD_HASHER = _hasher("word", (1, 2))
CHAR_HASHER = _hasher("char_wb", (3, 5))


def max_year(text: str) -> int:
    """Largest plausible year mentioned in the text, 0 when there is none."""
    years = [int(m) for m in _YEAR.findall(text)]
    years = [y for y in years if YEAR_MIN <= y <= YEAR_MAX]
    return max(years) if years else 0


@dataclass
class TextFeatures:
    """Per-document feature blocks, row-aligned with the input texts."""

    word: sp.csr_matrix  # hashed counts of word 1-2-grams
    char: sp.csr_matrix  # hashed counts of char 3-5-grams inside word boundaries
    year: np.ndarray  # (n, 1) largest plausible year, 0 if none

    def block(self, name: str):
        return getattr(self, name)


def _features_of_chunk(texts: list[str]) -> TextFeatures:
    return TextFeatures(
        word=sp.csr_matrix(WORD_HASHER.transform(texts)),
        char=sp.csr_matrix(CHAR_HASHER.transform(texts)),
        year=np.array([max_year(t) for t in texts], dtype=np.float64).reshape(-1, 1),
    )


def compute_features(texts: list[str], n_jobs: int | None = None, chunk: int = 10_000) -> TextFeatures:
    """Stateless, so chunks can be hashed in parallel processes and stacked in order."""
    if len(texts) <= chunk:
        return _features_of_chunk(texts)
    n_jobs = n_jobs or len(os.sched_getaffinity(0))
    parts = Parallel(n_jobs=n_jobs)(delayed(_features_of_chunk)(texts[i:i + chunk]) for i in range(0, len(texts), chunk))
    return TextFeatures(
        word=sp.vstack([p.word for p in parts], format="csr"),
        char=sp.vstack([p.char for p in parts], format="csr"),
        year=np.vstack([p.year for p in parts]),
    )


def word_ngram_names(texts: list[str], columns: set[int], limit_per_column: int = 3) -> dict[int, list[str]]:
    """Recover readable n-grams for hashed word columns, for reports ("which words leak?")."""
    analyzer = WORD_HASHER.build_analyzer()
    names: dict[int, list[str]] = {c: [] for c in columns}
    # the hasher maps each n-gram on its own: hash the distinct n-grams once, as one-token docs
    grams = sorted({g for t in texts for g in analyzer(t)})
    if not grams:
        return names
    ident = HashingVectorizer(
        analyzer=lambda g: [g], n_features=HASH_FEATURES, alternate_sign=False, norm=None
    )
    cols = ident.transform(grams).indices
    for gram, col in zip(grams, cols):
        col = int(col)
        if col in names and len(names[col]) < limit_per_column:
            names[col].append(gram)
    return names
