import dataclasses
from importlib import resources

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from scanner.baseline.features import (
    TextFeatures,
    compute_features,
    max_year,
    word_ngram_names,
)
from scanner.baseline.models import (
    Candidate,
    GreedyNgramRules,
    YearRule,
)
from scanner.baseline.nested import nested_cv
from scanner.baseline.vocabulary import FoldVocabulary
from scanner.baseline.run import run_baseline
from scanner.corpus import read_corpus
from scanner.errors import InputError
from scanner.metrics import roc_auc

WIKIMIA_128 = str(resources.files("scanner") / "data" / "wikimia_128.jsonl")


def test_max_year():
    assert max_year("Founded in 1998, renamed in 2023.") == 2023
    assert max_year("In 1,999 cases and 20234 others") == 0  # not years
    assert max_year("3000 people, 999 BC, version 2.2019") == 0
    assert max_year("2099 and 1000") == 2099
    assert max_year("no digits") == 0


def _english_texts(n: int, seed: int = 0) -> list[str]:
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(words) - 80, n)
    return [" ".join(words[s:s + rng.integers(1, 80)]) for s in starts]


def test_hashed_features_are_scikit_learns_hashing_vectorizers_column_for_column():
    """The compiled loops replace HashingVectorizer's Python analyzers (57 s on 100k documents):
    the same columns and counts, on English, punctuation, non-Latin scripts, digits, "_",
    astral-plane characters, odd whitespace and "İ" (whose lower case is two code points)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    texts = _english_texts(3000) + [
        "Hello, World! naïve café ÉCOLE x_y a b cc İstanbul", "", "  \n\t ", "a", "ab", "日本語のテキスト 2023年",
        "tab\tsep\u00a0nbsp \u2003em\u3000ideographic", "Ünïcödé 𝔘𝔫𝔦 emoji 😀😀 x ΑΒΓ δεζ", "co-op's \"quoted\" (x)",
    ]
    feats = compute_features(texts)
    for block, analyzer, ngrams in (("word", "word", (1, 2)), ("char", "char_wb", (3, 5))):
        ref = HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, n_features=1 << 20, alternate_sign=False,
                                norm=None, dtype=np.float32).transform(texts)
        ours = feats.block(block)
        assert ours.shape == ref.shape and ours.has_sorted_indices
        assert (ours != ref).nnz == 0, block
    assert feats.year[:, 0].tolist() == [max_year(t) for t in texts]
    one_thread = compute_features(texts, n_jobs=1)  # 3009 texts: two chunks, hashed by two threads above
    assert (one_thread.char != feats.char).nnz == 0 and (one_thread.word != feats.word).nnz == 0


def test_fold_vocabulary_reads_rows_of_the_whole_matrix_as_a_float64_reference_computes():
    rng = np.random.default_rng(0)
    X = sp.random(300, 500, density=0.03, format="csr", random_state=1, dtype=np.float32)
    X.data = np.ceil(X.data * 4)  # counts 1..4
    fit_rows, rows = np.sort(rng.choice(300, 200, replace=False)), rng.choice(300, 50, replace=False)
    v = FoldVocabulary(min_df=2).fit_rows(X, fit_rows)
    dense, fitted = X.toarray().astype(np.float64), X[fit_rows].toarray() > 0
    df = fitted.sum(axis=0)
    kept = np.flatnonzero(df >= 2)
    expected = np.log1p(dense[rows][:, kept]) * (np.log((1 + 200) / (1 + df[kept])) + 1)
    expected /= np.maximum(np.linalg.norm(expected, axis=1, keepdims=True), 1e-300)
    got = v.transform_rows(X, rows)
    assert v.columns_.tolist() == kept.tolist() and got.dtype == np.float32
    np.testing.assert_allclose(got.toarray(), expected, atol=1e-6)
    counts = FoldVocabulary(min_df=2, max_features=10, weighting="counts").fit_rows(X, fit_rows)
    top = kept[np.argsort(-df[kept], kind="stable")[:10]]
    np.testing.assert_array_equal(counts.transform_rows(X, rows).toarray(), dense[rows][:, np.sort(top)])


def test_averaged_sgd_logistic_regression_means_by_C_what_liblinear_does():
    """The large-corpus logistic model ranks held-out rows as liblinear's exact solution with the
    same C does, with weights in the same direction; where regularisation is strong its 5 passes
    reach the exact solution's size too (weakly regularised, they stop short of it)."""
    from scanner.baseline.models import AveragedSGDLogistic

    rng = np.random.default_rng(0)
    n, d = 6000, 300
    X = sp.random(n, d, density=0.05, format="csr", random_state=2, dtype=np.float32)
    y = (X @ rng.normal(size=d) + rng.logistic(size=n) > 0).astype(int)
    train, test = np.arange(4000), np.arange(4000, n)
    for C in (0.1, 1.0, 10.0):
        exact = LogisticRegression(C=C, solver="liblinear", dual=True, tol=1e-6, max_iter=1000).fit(X[train], y[train])
        sgd = AveragedSGDLogistic(C=C, seed=0).fit(X[train], y[train])
        aucs = [roc_auc(y[test], m.predict_proba(X[test])[:, 1]) for m in (sgd, exact)]
        assert abs(aucs[0] - aucs[1]) < 0.01, (C, aucs)
        assert np.corrcoef(sgd.model_.coef_.ravel(), exact.coef_.ravel())[0, 1] > 0.98, C
    strong = 0.1
    ratio = (np.linalg.norm(AveragedSGDLogistic(C=strong, seed=0).fit(X[train], y[train]).model_.coef_)
             / np.linalg.norm(LogisticRegression(C=strong, solver="liblinear", dual=True, tol=1e-6).fit(X[train], y[train]).coef_))
    assert 0.9 < ratio < 1.1, ratio


def test_the_large_corpus_search_space_separates_a_shifted_split():
    """The settings a corpus past LARGE_TRAIN training rows gets (averaged SGD, a forest on a
    sample of rows), run end to end here on a small shifted split."""
    from scanner.baseline.models import LARGE_TRAIN, candidates

    rng = np.random.default_rng(1)
    texts, y = _english_texts(900, seed=1), rng.integers(0, 2, 900)
    texts = [t + (" ember tide" if label and rng.random() < 0.5 else "") for t, label in zip(texts, y)]
    large = nested_cv(compute_features(texts), y, folds=3, seed=0, n_jobs=2,
                      make_candidates=lambda n, seed: candidates(LARGE_TRAIN + 1, seed))
    assert roc_auc(y, large.scores) > 0.7
    names = {name for f in large.folds for name in f["inner_auc"]}
    assert {"logreg_char(C=1.0, solver=sgd)", "random_forest(trees=100, vocab=5000, rows=20000)"} <= names


# ------------------------------------------------------------------ fold hygiene

class RecordingVocabulary(FoldVocabulary):
    """A vocabulary that records which rows it was fitted on, and in which outer fold."""

    fits: list = []
    folds_made = [0]

    def __init__(self, fold: int = 0, min_df: int = 2, max_features=None, weighting: str = "tfidf"):
        super().__init__(min_df, max_features, weighting)
        self.fold = fold

    def fit_rows(self, X, rows):
        RecordingVocabulary.fits.append((self.fold, set(np.asarray(rows).tolist())))
        return super().fit_rows(X, rows)


def recording_candidates(n_train, seed):
    RecordingVocabulary.folds_made[0] += 1  # called once per outer fold, in fold order
    vocabulary = RecordingVocabulary(fold=RecordingVocabulary.folds_made[0])
    return [Candidate("logreg_word", {"C": C}, "word", lambda C=C: LogisticRegression(C=C), vocabulary)
            for C in (0.1, 1.0)]


def row_tagged_features(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    word = sp.random(n, 200, density=0.05, format="csr", random_state=seed, dtype=np.float32)
    return TextFeatures(word=word, char=word, year=np.zeros((n, 1))), y


def check_vectorisers_saw_only_training_rows(fits, y, folds, seed):
    outer = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    for fold, rows in fits:
        test_rows = set(outer[fold - 1][1].tolist())
        assert not rows & test_rows, f"a vectoriser in outer fold {fold} was fitted on {len(rows & test_rows)} of its test rows"


def test_vectorisers_are_fitted_on_training_folds_only():
    feats, y = row_tagged_features(120)
    RecordingVocabulary.fits, RecordingVocabulary.folds_made = [], [0]
    result = nested_cv(feats, y, folds=4, inner_folds=3, seed=3, make_candidates=recording_candidates, n_jobs=2)
    # 4 outer folds x (3 inner fits shared by the 2 settings + 1 refit of the family's best)
    assert len(RecordingVocabulary.fits) == 4 * (3 + 1)
    check_vectorisers_saw_only_training_rows(RecordingVocabulary.fits, y, folds=4, seed=3)
    assert not np.isnan(result.scores).any()


def test_a_candidate_with_max_rows_fits_on_a_stratified_sample_of_its_training_rows():
    feats, y = row_tagged_features(240)
    RecordingVocabulary.fits, RecordingVocabulary.folds_made = [], [0]

    def sampled(n_train, seed):
        return [dataclasses.replace(c, max_rows=50) for c in recording_candidates(n_train, seed)]

    nested_cv(feats, y, folds=4, inner_folds=3, seed=3, make_candidates=sampled, n_jobs=2)
    check_vectorisers_saw_only_training_rows(RecordingVocabulary.fits, y, folds=4, seed=3)
    assert len(RecordingVocabulary.fits) == 4 * (3 + 1) and {len(rows) for _, rows in RecordingVocabulary.fits} == {50}
    share = [y[sorted(rows)].mean() for _, rows in RecordingVocabulary.fits]
    assert max(abs(s - y.mean()) for s in share) <= 0.02  # each class in proportion, to a row


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
    names = word_ngram_names(texts, feats.word, set(member_cols.tolist()))
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
