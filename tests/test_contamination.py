import numpy as np
import pytest

from scanner.contamination import OperatingPoint, contaminated_fraction, rogan_gladen


def test_rogan_gladen_inverts_the_flag_rate():
    # 30% members, TPR 0.8, FPR 0.05: flag rate 0.3*0.8 + 0.7*0.05 = 0.275
    assert rogan_gladen(0.275, 0.8, 0.05) == pytest.approx(0.3)
    assert rogan_gladen(0.01, 0.8, 0.05) == 0.0  # below the FPR: clipped, never negative
    assert np.isnan(rogan_gladen(0.5, 0.1, 0.2))  # no separation: no estimate


def test_interval_covers_the_truth_including_operating_point_noise():
    rng = np.random.default_rng(0)
    truth, tpr, fpr, n = 0.3, 0.7, 0.05, 2000
    covered = []
    for rep in range(200):
        op = OperatingPoint(tp=rng.binomial(200, tpr), n_pos=200, fp=rng.binomial(200, fpr), n_neg=200)
        members = rng.binomial(n, truth)
        flagged = rng.binomial(members, tpr) + rng.binomial(n - members, fpr)
        e = contaminated_fraction(int(flagged), n, op, draws=2000, seed=rep)
        covered.append(e["ci"][0] <= truth <= e["ci"][1])
    assert 0.9 <= np.mean(covered) <= 1.0


def test_zero_false_positives_still_leave_fpr_uncertainty():
    e = contaminated_fraction(0, 1000, OperatingPoint(tp=30, n_pos=40, fp=0, n_neg=40))
    assert e["estimate"] == 0.0 and e["ci"][0] == 0.0
    assert e["ci"][1] < 0.01  # flagged nothing of 1000: little room above 0
    e = contaminated_fraction(50, 1000, OperatingPoint(tp=30, n_pos=40, fp=0, n_neg=40))
    assert e["estimate"] == pytest.approx(0.05 / 0.75)
    assert e["ci"][0] < 0.05  # an FPR of 0/40 may really be a few percent: the interval says so


def test_a_detector_that_does_not_separate_gives_no_estimate():
    e = contaminated_fraction(100, 1000, OperatingPoint(tp=2, n_pos=40, fp=3, n_neg=40))
    assert not e["estimable"] and e["estimate"] is None and e["ci"] is None
    assert OperatingPoint.measure(np.array([1, 0, 1, 1]), np.array([1, 1, 0, 0])) == OperatingPoint(1, 2, 2, 2)
