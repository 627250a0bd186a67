from importlib import resources

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline

from scanner.baseline.features import (
    HASH_FEATURES,
    TextFeatures,
    compute_features,
    max_year,
    word_ngram_names,
)
from scanner.baseline.models import (
    Candidate,
    FoldVocabulary,
    GreedyNgramRules,
    YearRule,
)
from scanner.baseline.nested import nested_cv
from scanner.baseline.run import run_baseline
from scanner.corpus import read_corpus
from scanner.errors import InputError

WIKIMIA_128 = str(resources.files("scanner") / "data" / "wikimia_128.jsonl")


def test_max_year():
    assert max_year("Founded in 1998, renamed in 2023.") == 2023
    assert max_year("In 1,999 cases and 20234 others") == 0  # not years
    assert max_year("3000 people, 999 BC, version 2.2019") == 0
    assert max_year("2099 and 1000") == 2099
    assert max_year("no digits") == 0


# ------------------------------------------------------------------ fold hygiene

ROW_COLUMN = HASH_FEATURES - 1  # the test puts each row's index (+1) in this column


class RecordingVocabulary(FoldVocabulary):
    """A vectoriser that records which rows it was fitted on."""

    fits: list = []
    fold = [0]

    def fit(self, X, y=None):
        rows = np.asarray(sp.csr_matrix(X)[:, ROW_COLUMN].todense()).ravel().astype(int) - 1
        RecordingVocabulary.fits.append((RecordingVocabulary.fold[0], set(rows.tolist())))
        return super().fit(X, y)


def recording_candidates(n_train, seed):
    RecordingVocabulary.fold[0] += 1  # called once per outer fold, in order when n_jobs=1
    return [Candidate("logreg_word", {"C": C}, "word",
                      lambda C=C: make_pipeline(RecordingVocabulary(), LogisticRegression(C=C)))
            for C in (0.1, 1.0)]


def row_tagged_features(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    word = sp.random(n, HASH_FEATURES - 1, density=2e-5, format="csr", random_state=seed, dtype=np.float32)
    word = sp.hstack([word, sp.csr_matrix(np.arange(1, n + 1, dtype=np.float32).reshape(-1, 1))]).tocsr()
    return TextFeatures(word=word, char=word, year=np.zeros((n, 1))), y


def check_vectorisers_saw_only_training_rows(fits, y, folds, seed):
    outer = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    for fold, rows in fits:
        test_rows = set(outer[fold - 1][1].tolist())
        assert not rows & test_rows, f"a vectoriser in outer fold {fold} was fitted on {len(rows & test_rows)} of its test rows"


def test_vectorisers_are_fitted_on_training_folds_only():
    feats, y = row_tagged_features(120)
    RecordingVocabulary.fits, RecordingVocabulary.fold = [], [0]
    result = nested_cv(feats, y, folds=4, inner_folds=3, seed=3, make_candidates=recording_candidates, n_jobs=1)
    # 4 outer folds x (2 settings x 3 inner fits + 1 refit of the family's best)
    assert len(RecordingVocabulary.fits) == 4 * (2 * 3 + 1)
    check_vectorisers_saw_only_training_rows(RecordingVocabulary.fits, y, folds=4, seed=3)
    assert not np.isnan(result.scores).any()


class DenseBlock:
    def __init__(self, X):
        self.X = X

    def block(self, name):
        return self.X


def test_repeated_cross_validation_averages_each_samples_out_of_fold_scores():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X[:, 0] + rng.normal(size=80) > 0).astype(int)

    def cands(n, seed):
        return [Candidate("logreg", {"C": C}, "x", lambda C=C: LogisticRegression(C=C)) for C in (0.1, 1.0)]

    one = nested_cv(DenseBlock(X), y, folds=4, seed=3, make_candidates=cands, n_jobs=1)
    two = nested_cv(DenseBlock(X), y, folds=4, seed=3, repeats=2, make_candidates=cands, n_jobs=1)
    assert [(f["repeat"], f["fold"]) for f in two.folds] == [(r, k) for r in (1, 2) for k in range(1, 5)]
    assert sum(f["n_test"] for f in two.folds) == 2 * 80  # every sample tested once per repeat
    second = 2 * two.scores - one.scores  # the first repeat draws what a single run draws
    assert ((second > 0) & (second < 1)).all() and not np.allclose(second, one.scores)
    outer = StratifiedKFold(4, shuffle=True, random_state=3).split(np.zeros(80), y)
    assert all((two.fold_of[test] == k).all() for k, (_, test) in enumerate(outer, 1))
    assert len(two.fold_aucs()) == 8 and len(one.fold_aucs("logreg")) == 4
    assert two.test_train_ratio == pytest.approx(20 / 60)


def test_the_hygiene_check_catches_a_vectoriser_fitted_on_all_rows():
    """The check above must be able to fail: a vectoriser fitted on the whole corpus is caught."""
    y = np.random.default_rng(0).integers(0, 2, 120)  # row_tagged_features(120)'s labels, without its matrix
    leaky_fits = [(fold, set(range(120))) for fold in range(1, 5)]
    with pytest.raises(AssertionError, match="fitted on 30 of its test rows"):
        check_vectorisers_saw_only_training_rows(leaky_fits, y, folds=4, seed=3)


def test_fold_vocabulary_learns_only_from_fitted_rows():
    X = sp.csr_matrix(np.array([[1, 0, 2, 0], [1, 0, 1, 0], [0, 3, 0, 1]], dtype=np.float32))
    v = FoldVocabulary(min_df=2).fit(X[:2])
    assert v.columns_.tolist() == [0, 2]  # column 1 and 3 appear only in the unfitted row
    out = v.transform(X)
    assert out.shape == (3, 2) and out[2].nnz == 0


# ------------------------------------------------------------------ model families


def test_year_rule_learns_the_cutoff_and_direction():
    years = np.array([2001, 2005, 2010, 2012, 0, 2022, 2023, 2023, 2024, 0], dtype=float).reshape(-1, 1)
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    rule = YearRule().fit(years, y)
    assert rule.cutoff_ == 2022
    p = rule.predict_proba(np.array([[2003.0], [2024.0]]))[:, 1]
    assert p[0] > 0.5 > p[1]


def test_greedy_rules_pick_discriminative_ngrams_within_the_fpr_budget():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    texts = [" ".join(rng.choice(["the", "a", "of", "in", "and", "to"], 30)) for _ in range(n)]
    texts = [t + (" ember" if yi and rng.random() < 0.6 else "") + (" noise" if rng.random() < 0.2 else "")
             for t, yi in zip(texts, y)]
    feats = compute_features(texts)
    model = GreedyNgramRules(fpr_budget=0.05).fit(feats.word, y)
    member_cols, _ = model.rules_[1]
    names = word_ngram_names(texts, set(member_cols.tolist()))
    assert any("ember" in names[c] for c in member_cols.tolist())
    # on the training rows, the member rules flag at most 5% of non-members
    fired = np.asarray((feats.word[:, member_cols] > 0).sum(axis=1)).ravel() > 0
    assert fired[y == 0].mean() <= 0.05
    p = model.predict_proba(feats.word)[:, 1]
    assert p[(y == 1) & fired].min() > p[~fired].max()


def test_greedy_rules_leave_the_callers_matrix_as_it_is():
    counts = sp.csr_matrix(np.array([[3.0, 0, 2], [0, 4, 0], [5, 0, 0], [0, 2, 7]] * 5))
    before = counts.toarray().copy()
    GreedyNgramRules(min_support=1).fit(counts, np.array([1, 0, 1, 0] * 5))
    np.testing.assert_array_equal(counts.toarray(), before)


# ------------------------------------------------------------------ end to end


def _samples(path):
    return read_corpus([path]).labelled()


@pytest.mark.slow
def test_wikimia_128_is_flagged_leaky_with_auc_at_least_0_98():
    out = run_baseline(_samples(WIKIMIA_128), folds=5, seed=0, n_boot=500)
    m = out.metrics
    assert m["n"] == 250 and m["n_members"] == 139
    assert m["auc"] >= 0.98, m["auc"]
    assert m["auc_ci"][0] > 0.95
    assert m["verdict"]["status"] == "leaky" and not m["verdict"]["usable_for_mia"]
    assert set(m["models"]) >= {"naive_bayes", "logreg_word", "logreg_char", "random_forest", "date",
                                "greedy_ngrams", "stack"}
    assert len(m["folds"]) == 5 and all(f["n_train"] + f["n_test"] == 250 for f in m["folds"])
    assert out.scores.height == 250 and not out.scores["score"].is_nan().any()
    tops = [r["ngram"] for r in m["top_ngrams"]["non_member"]]
    assert any(t in ("2022", "2023", "2024") for t in tops), tops  # WikiMIA's non-members are recent events


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_permuted_wikimia_labels_look_usable(seed):
    samples = _samples(WIKIMIA_128)
    rng = np.random.default_rng(seed)
    samples = samples.with_columns(pl.Series("label", rng.permutation(samples["label"].to_numpy())))
    m = run_baseline(samples, folds=5, seed=seed, n_boot=500).metrics
    lo, hi = m["auc_ci"]
    assert lo <= 0.5 <= hi, (lo, hi)
    assert m["verdict"]["status"] == "usable"


def test_too_few_samples_is_a_clear_input_error():
    samples = pl.DataFrame({"sample_id": [str(i) for i in range(12)], "text": ["some text"] * 12,
                            "label": [1] * 10 + [0] * 2, "source": ["s"] * 12})
    with pytest.raises(InputError, match="smaller class has 2; need at least 15"):
        run_baseline(samples)
