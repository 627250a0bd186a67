"""Loss-trajectory features (CAMIA-style): each on a case computed by hand, and each separating
the tiny GPT-2's training passages from held-out ones in the direction it declares."""

import numpy as np
import pytest

from scanner.metrics import roc_auc
from scanner.scoring import registry
from scanner.scoring.registry import ScoreInputs

TRAJECTORY = ("loss_slope", "loss_first_25", "loss_first_50", "below_1", "below_3")


def test_the_trajectory_features_by_hand():
    s = registry.compute(ScoreInputs("t", np.array([-3.0, -2.0, -1.0, -0.5])))
    # losses 3, 2, 1, 0.5 at positions 0, 1/3, 2/3, 1: Sxy = -17/12, Sxx = 5/9
    assert s["loss_slope"] == pytest.approx(-17 / 12 / (5 / 9))
    assert s["loss_first_25"] == 3.0 and s["loss_first_50"] == 2.5  # the first 1 and 2 of 4 tokens
    assert s["below_1"] == 0.25 and s["below_3"] == 0.75  # a loss of exactly 3 is not below 3
    one = registry.compute(ScoreInputs("t", np.array([-2.0])))
    assert one["loss_slope"] == 0.0 and one["loss_first_25"] == 2.0


def test_each_separates_the_training_passages_in_its_direction(tiny_lm):
    from scanner.scoring.hf import HFScorer
    from scanner.scoring.stats import sample_features

    texts = tiny_lm["members"] + tiny_lm["non_members"]
    y = np.array([1] * len(tiny_lm["members"]) + [0] * len(tiny_lm["non_members"]))
    rows = [sample_features(t, s, [], None) for t, s in zip(texts, HFScorer(tiny_lm["model"]).score_texts(texts))]
    auc = {n: roc_auc(y, np.array([r[n] for r in rows]) * registry.member_sign(n)) for n in TRAJECTORY}
    # measured: slope 0.578, first 25% 0.966, first 50% 0.990, below 1 nat 0.814, below 3 nats 0.960
    assert auc["loss_slope"] > 0.53 and min(auc[n] for n in TRAJECTORY[1:]) > 0.75, auc
