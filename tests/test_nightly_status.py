"""The nightly verdict is a pure function of the estimate, its interval and the last run's."""

import pytest

from scanner.nightly import exit_code, set_status


def estimate(value, lo, hi):
    return {"estimate": value, "ci": [lo, hi], "estimable": True}


@pytest.mark.parametrize("contamination, previous, status", [
    (estimate(0.02, 0.0, 0.06), None, "clean"),  # the interval reaches below the threshold
    (estimate(0.20, 0.06, 0.30), None, "contaminated"),  # it lies wholly above 0.05
    (estimate(0.20, 0.06, 0.30), 0.0, "contaminated"),  # contaminated wins over worse
    (estimate(0.04, 0.0, 0.10), 0.0, "clean"),  # rose by 0.04 <= 0.05
    (estimate(0.07, 0.0, 0.20), 0.01, "worse"),  # rose by 0.06 > 0.05, interval not above 0.05
    (estimate(0.00, 0.0, 0.02), 0.30, "clean"),  # better than last time
])
def test_status(contamination, previous, status):
    assert set_status(contamination, previous, threshold=0.05, max_increase=0.05) == status


def test_exit_code_is_the_worst_status_and_an_error_wins():
    assert exit_code(["clean", "clean"]) == 0
    assert exit_code(["clean", "worse"]) == 1 and exit_code(["contaminated"]) == 1
    assert exit_code(["contaminated", "error", "clean"]) == 2
    assert exit_code([]) == 0


def test_holm_adjusts_step_down_and_stays_monotone():
    from scanner.nightly import holm

    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})  # 3x, 2x, then max(1x, previous)
    assert holm({"only": 0.2}) == {"only": 0.2} and holm({}) == {}


def test_a_set_test_below_alpha_after_holm_makes_a_clean_set_contaminated():
    from scanner.nightly import apply_set_tests

    results = {"a": {"status": "clean", "inference": {"p_value": 0.004}},
               "b": {"status": "clean", "inference": {"p_value": 0.02}},  # 1 x 0.02 > 0.01
               "c": {"status": "error"},
               "d": {"status": "invalid", "inference": {"verdict": "invalid: distribution shift", "p_value": None}}}
    apply_set_tests(results, alpha=0.01)
    assert results["a"]["status"] == "contaminated" and results["a"]["inference"]["p_holm"] == pytest.approx(0.008)
    assert results["b"]["status"] == "clean" and results["b"]["inference"]["verdict"] == "not shown"
    assert results["d"]["status"] == "invalid" and exit_code([r["status"] for r in results.values()]) == 2
