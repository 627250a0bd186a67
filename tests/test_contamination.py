import numpy as np
import pytest

from scanner.contamination import OperatingPoint, contaminated_fraction, fraction_over_exposures, rogan_gladen


def test_rogan_gladen_inverts_the_flag_rate():
    # 30% members, TPR 0.8, FPR 0.05: flag rate 0.3*0.8 + 0.7*0.05 = 0.275
    assert rogan_gladen(0.275, 0.8, 0.05) == pytest.approx(0.3)
    assert rogan_gladen(0.01, 0.8, 0.05) == 0.0  # below the FPR: clipped, never negative
    assert np.isnan(rogan_gladen(0.5, 0.1, 0.2))  # no separation: no estimate


def _coverage(truth, tpr, fpr, n, n_pos, n_neg, sets, seed):
    """Share of simulated sets whose interval holds the true fraction; the operating point is
    measured anew for every set, so its noise counts too."""
    rng = np.random.default_rng(seed)
    covered = []
    for _ in range(sets):
        op = OperatingPoint(tp=int(rng.binomial(n_pos, tpr)), n_pos=n_pos, fp=int(rng.binomial(n_neg, fpr)), n_neg=n_neg)
        members = rng.binomial(n, truth)
        flagged = rng.binomial(members, tpr) + rng.binomial(n - members, fpr)
        e = contaminated_fraction(int(flagged), n, op)
        assert e["estimable"] and e["ci"][0] <= e["estimate"] <= e["ci"][1]
        covered.append(e["ci"][0] <= truth <= e["ci"][1])
    return float(np.mean(covered))


@pytest.mark.parametrize("tpr, fpr, n, n_pos, n_neg", [
    (0.9, 0.1, 500, 60, 60),  # a sweep with a small labelled set: percentile intervals covered 89% at 0.2
    (0.3, 0.01, 2000, 200, 200),  # a weak detector at a strict threshold
    (0.6, 0.05, 400, 200, 400),  # infer: a calibrated TPR, the FPR measured on a 400-text reference
])
def test_interval_covers_the_true_fraction_from_clean_to_all_seen(tpr, fpr, n, n_pos, n_neg):
    # 1000 sets per fraction (the Monte Carlo error is then 0.7 points, so >= 0.93 tests a 95% interval)
    for truth in (0.0, 0.05, 0.2, 0.5, 1.0):
        assert _coverage(truth, tpr, fpr, n, n_pos, n_neg, sets=1000, seed=1) >= 0.93, truth


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


def test_the_range_over_exposures_spans_the_groups_intervals_by_hand():
    pooled = OperatingPoint(tp=12, n_pos=20, fp=1, n_neg=40)
    groups = {"seen 1x": OperatingPoint(1, 10, 1, 40), "seen 16x": OperatingPoint(10, 10, 1, 40),
              "seen 4x": OperatingPoint(1, 10, 1, 40)}
    e = fraction_over_exposures(30, 100, pooled, groups)
    each = {name: contaminated_fraction(30, 100, g) for name, g in groups.items()}
    assert each["seen 1x"]["estimable"] and each["seen 16x"]["estimate"] == pytest.approx((0.3 - 0.025) / (1 - 0.025))
    assert e["ci_over_exposures"] == [min(e["ci"][0], *(g["ci"][0] for g in each.values())),
                                      max(e["ci"][1], *(g["ci"][1] for g in each.values()))]
    assert e["by_exposure"]["seen 16x"]["tpr"] == 1.0 and e["estimate"] == contaminated_fraction(30, 100, pooled)["estimate"]
    # a group the detector cannot see (TPR <= FPR): any fraction of such members fits, so the top is 1
    blind = fraction_over_exposures(30, 100, pooled, groups | {"seen 1x": OperatingPoint(0, 10, 4, 40)})
    assert blind["ci_over_exposures"][1] == 1.0 and blind["by_exposure"]["seen 1x"]["ci"] is None
    assert "by_exposure" not in fraction_over_exposures(30, 100, pooled, {})


@pytest.mark.parametrize("truth", [0.0, 0.3])
def test_the_range_holds_the_truth_when_the_members_were_seen_like_one_group(truth):
    """Members seen as often as the 16x group (true TPR 0.9) while the pooled TPR mixes 1x/4x/16x:
    the pooled interval misses, the range over the groups keeps >= 93% coverage."""
    rng = np.random.default_rng(0)
    tprs, n_pos, n_neg, n, fpr = {"seen 1x": 0.1, "seen 4x": 0.5, "seen 16x": 0.9}, 10, 30, 400, 0.03
    covered, pooled_covered = [], []
    for _ in range(500):
        fp = int(rng.binomial(n_neg, fpr))
        groups = {g: OperatingPoint(int(rng.binomial(n_pos, t)), n_pos, fp, n_neg) for g, t in tprs.items()}
        pooled = OperatingPoint(sum(g.tp for g in groups.values()), 3 * n_pos, fp, n_neg)
        members = rng.binomial(n, truth)
        flagged = int(rng.binomial(members, 0.9) + rng.binomial(n - members, fpr))
        e = fraction_over_exposures(flagged, n, pooled, groups)
        if not e["estimable"]:
            continue
        covered.append(e["ci_over_exposures"][0] <= truth <= e["ci_over_exposures"][1])
        pooled_covered.append(e["ci"][0] <= truth <= e["ci"][1])
    assert np.mean(covered) >= 0.93, np.mean(covered)
    if truth > 0:
        assert np.mean(pooled_covered) < 0.5  # why the range exists: the pooled TPR (0.5) is wrong here
