import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scanner.metrics import bootstrap_auc_ci, corrected_cv_interval, roc_auc, roc_points, summarize, tpr_at_fpr


def test_auc_hand_computed():
    # pairs (member, non-member): (0.35 > 0.1) (0.35 < 0.4) (0.8 > 0.1) (0.8 > 0.4) -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([1, 1, 0], [3, 2, 1]) == pytest.approx(1.0)
    assert roc_auc([1, 1, 0], [1, 2, 3]) == pytest.approx(0.0)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_tpr_at_fpr_stepped_hand_computed():
    neg = list(range(1, 11))  # 10 non-members scoring 1..10
    pos = [11, 9.5, 8.5, 0]
    y = [0] * 10 + [1] * 4
    s = neg + pos
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(0.25)  # only 11 is above every non-member
    assert tpr_at_fpr(y, s, 0.1) == pytest.approx(0.5)  # one false positive (10) admits 9.5
    assert tpr_at_fpr(y, s, 0.15) == pytest.approx(0.5)  # stepped: no interpolation towards 0.2
    assert tpr_at_fpr(y, s, 0.2) == pytest.approx(0.75)
    fpr, tpr = roc_points(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_estimable_flag_needs_ten_over_fpr_non_members():
    y = np.r_[np.zeros(100), np.ones(50)]
    s = np.arange(150.0)
    m = summarize(y, s, n_boot=50)
    assert m["tpr_at_fpr_estimable"] == {"0.001": False, "0.01": False, "0.05": False}
    y = np.r_[np.zeros(1000), np.ones(50)]
    m = summarize(y, np.arange(1050.0), n_boot=50)
    assert m["tpr_at_fpr_estimable"] == {"0.001": False, "0.01": True, "0.05": True}
    assert m["n"] == 1050 and m["n_members"] == 50 and m["auc"] == 1.0 and m["tpr_convention"] == "stepped"


def test_bootstrap_ci_equals_a_naive_stratified_bootstrap():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + 0.8 * y, 1)
    lo, hi = bootstrap_auc_ci(y, s, n_boot=300, seed=7)
    # the same resamples, drawn the same way, each scored by the plain AUC
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    draw = np.random.default_rng(7)
    aucs = []
    for _ in range(300):
        n_idx = draw.integers(0, len(neg), len(neg))
        p_idx = draw.integers(0, len(pos), len(pos))
        aucs.append(roc_auc(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg[n_idx], pos[p_idx]]))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])), abs=1e-12)
    assert lo < roc_auc(y, s) < hi


def test_bootstrap_ci_shrinks_with_more_data():
    rng = np.random.default_rng(2)

    def width(n):
        y = rng.integers(0, 2, n)
        lo, hi = bootstrap_auc_ci(y, rng.normal(size=n) + y, n_boot=300)
        return hi - lo

    assert width(4000) < width(200) / 2


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="both members"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(non-member\\) or 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, np.nan])


def test_an_mia_at_chance_does_not_beat_a_baseline_below_chance():
    """On null samples the blind baseline's cross-validation scatters around 0.5, often below; the
    MIA must then beat chance, not that baseline. Under the null (the MIA score is noise) the claim "beats"
    is made at most at the bootstrap's one-sided 2.5%, not at the rate subtracting 0.4 would give."""
    from scanner.evaluate import against_baseline

    rng = np.random.default_rng(0)
    beats = 0
    for _ in range(60):
        y = rng.permutation(np.arange(120) % 2)
        below = -y + rng.normal(0, 2.0, len(y))  # an anti-learnt baseline, AUC ~0.36
        d = against_baseline(y, rng.normal(size=len(y)), below, n_boot=100, seed=0)
        assert d["reference"].startswith("chance")
        beats += d["ci"][0] > 0
    assert beats <= 5, beats  # 2.5% of 60 is 1.5; against the baseline itself most would "beat" it
    y = rng.permutation(np.arange(200) % 2)
    above = y + rng.normal(0, 2.0, len(y))
    d = against_baseline(y, 2 * y + rng.normal(0, 2.0, len(y)), above, n_boot=100)
    assert d["reference"] == "blind baseline" and d["difference"] < 0.5


def test_corrected_cv_interval_hand_computed():
    """Nadeau & Bengio: the variance of the mean of J fold AUCs is (1/J + n_test/n_train) times
    their variance; the half-width takes t with J - 1 degrees of freedom."""
    from scipy.stats import t

    aucs = [0.50, 0.60, 0.55, 0.45, 0.65]  # sample variance 0.00625
    lo, hi = corrected_cv_interval(0.55, aucs, 0.25)
    half = t.ppf(0.975, 4) * np.sqrt((1 / 5 + 0.25) * 0.00625)
    assert lo == pytest.approx(0.55 - half) and hi == pytest.approx(0.55 + half)
    assert half == pytest.approx(0.1472, abs=1e-4)
    assert corrected_cv_interval(0.99, [0.9, 1.0], 0.25)[1] == 1.0  # clipped to [0, 1]
    with pytest.raises(ValueError, match="two folds"):
        corrected_cv_interval(0.5, [0.5], 0.25)
