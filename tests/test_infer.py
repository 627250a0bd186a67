"""Dataset inference (`scanner infer`): the set test is calibrated under the null, has power where
single scores are near chance, and refuses distribution-shifted sets."""

import json

import numpy as np
import polars as pl
import pytest

from scanner.detector.data import aggregates, available_classic, member_score
from scanner.infer.stats import cauchy_combination, seen_lower_bound, set_test
from scanner.metrics import roc_auc
from scanner.runfolder import RunFolder
from scanner.toy import english_passages, train_tiny_gpt2


def test_cauchy_combination_of_equal_p_values_is_that_p_value_and_handles_tiny_ones():
    for p in (0.5, 0.05, 1e-4):
        assert cauchy_combination([p] * 7) == pytest.approx(p, rel=1e-9)
    assert 0 < cauchy_combination([1e-300, 0.5, 0.9]) < 1e-290
    assert cauchy_combination([0.2, 0.9]) > 0.2  # one weak split does not make a discovery


def test_set_test_rejects_at_the_nominal_rate_on_gaussian_null_sets():
    rng = np.random.default_rng(3)
    tests = [set_test(*rng.normal(size=(2, 120, 10)), seed=i) for i in range(300)]
    p = np.array([t.p_value for t in tests])
    assert 0.02 <= (p < 0.05).mean() <= 0.08, (p < 0.05).mean()
    # each split's 95% interval for Cohen's d (the report's headline plot) covers the true 0
    covered = np.mean([lo <= 0 <= hi for t in tests for lo, hi in (s["cohens_d_ci"] for s in t.splits)])
    assert 0.93 <= covered <= 0.97, covered


def test_the_seen_lower_bound_holds_at_every_fraction_and_grows_with_it():
    """Without a detector: a lower confidence bound. 300 simulated suspect sets per true fraction
    (members' scores shifted by 2 sd, the rest drawn like the reference): the bound stays at or
    below the truth in >= 95% of them, and it is informative where much was seen."""
    rng = np.random.default_rng(0)
    mean_bound = {}
    for truth in (0.0, 0.05, 0.2, 0.5, 1.0):
        bounds = []
        for _ in range(300):
            seen = rng.random(200) < truth
            bounds.append(seen_lower_bound(rng.normal(size=200) + 2 * seen, rng.normal(size=200), alpha=0.05))
        assert np.mean(np.array(bounds) <= truth) >= 0.95, truth
        mean_bound[truth] = float(np.mean(bounds))
    assert mean_bound[0.0] < 0.01 and mean_bound[0.5] > 0.2 and mean_bound[1.0] > 0.6, mean_bound
    # set_test reports the median of the splits' bounds (each at alpha/2)
    X = np.c_[rng.normal(size=300) + 3 * (np.arange(300) < 150), rng.normal(size=300)]
    assert 0.2 < set_test(X, rng.normal(size=(300, 2)), seed=0).seen_at_least <= 0.5


@pytest.fixture(scope="module")
def inferred(tmp_path_factory):
    """A tiny GPT-2 trained on 60 of 300 suspect passages (20%) and on 190 other passages; the
    reference is 300 more passages it never saw, i.i.d. with the suspect set; `scanner infer`."""
    from tests.test_cli import scanner

    root = tmp_path_factory.mktemp("infer")
    passages = english_passages(20, 150)
    order = np.random.default_rng(0).permutation(len(passages))
    suspect, reference = [passages[i] for i in order[:300]], [passages[i] for i in order[300:600]]
    other = [passages[i] for i in order[600:]]
    members = suspect[:60]  # a list: a set's order changes with the process's hash seed, and the model with it
    train_tiny_gpt2(members + other, passages, root / "model", target_loss=5.0, log=lambda m: None)
    for name, texts in (("suspect", suspect), ("reference", reference)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name[0]}{i}", "text": t}) + "\n"
                                                    for i, t in enumerate(texts)))
    res = scanner("infer", str(root / "suspect.jsonl"), "--reference", str(root / "reference.jsonl"), "--model",
                  str(root / "model"), "--out", str(root / "out"), "--neighbors", "4", timeout=1200)
    return {"root": root, "res": res, "members": members, "other": other, "passages": passages}


@pytest.mark.heavy  # CI time (its model and scans take ~2 minutes); nightly's set-test run keeps infer's path
@pytest.mark.timeout(1500)
def test_infer_finds_a_set_with_20_percent_members_where_single_scores_are_near_chance(inferred):
    res, out = inferred["res"], inferred["root"] / "out"
    assert res.returncode == 1, res.stderr[-3000:]  # 1 = seen
    m = json.loads((out / "metrics.json").read_text())
    lo, hi = m["blind_baseline"]["auc_ci"]
    assert lo <= 0.55 and m["verdict"] == "seen"
    suspect, reference = (RunFolder(out / name).features() for name in ("suspect", "reference"))
    both = pl.concat([suspect.with_columns(y=pl.lit(1)), reference.with_columns(y=pl.lit(0))], how="diagonal_relaxed")
    single = {c: roc_auc(both["y"].to_numpy(), member_score(both, c)) for c in available_classic(both)}
    best = max(single, key=single.get)
    print(f"p = {m['p_value']:.2e}; best single score {best}: AUC {single[best]:.3f} (suspect vs reference)")
    assert m["p_value"] < 0.01
    assert 0 <= m["seen_at_least"] <= 0.2  # a valid lower bound; with 60 of 300 it is weak
    # With 20% members no single score can pass about 0.5 + 0.2 x 0.5 = 0.6 (members perfectly
    # told apart), and 300 vs 300 unseen texts alone move an AUC by about +-0.02: near chance.
    assert single[best] < 0.62
    for name in ("report.md", "report.html", "held_out_scores.png", "headline.png"):
        assert (out / name).is_file()
    md = (out / "report.md").read_text()
    assert md.index(f"{m['p_value']:.3g}") < md.index("headline.png") < md.index("## ")  # the answer first
    assert all(s["cohens_d_ci"][0] < s["cohens_d"] < s["cohens_d_ci"][1] for s in m["test"]["splits"])


@pytest.mark.heavy  # CI time; the Gaussian null calibration and the coverage tests stay in the default run
@pytest.mark.timeout(1500)
def test_the_set_test_is_calibrated_on_unseen_text_scored_by_the_model(inferred):
    """Score once, redraw: the unseen suspect samples and the reference form one pool of text the
    model never saw; 400 random suspect/reference draws from it are rejected at about 5%."""
    out = inferred["root"] / "out"
    pool = pl.concat([RunFolder(out / "suspect").features(), RunFolder(out / "reference").features()],
                     how="diagonal_relaxed")
    pool = pool.filter(~pl.col("text").is_in(list(inferred["members"])))
    X, _ = aggregates(pool)
    assert len(X) == 540
    rng = np.random.default_rng(0)
    p = []
    for i in range(400):
        order = rng.permutation(len(X))
        p.append(set_test(X[order[:150]], X[order[150:300]], seed=i).p_value)
    rate = float((np.array(p) < 0.05).mean())
    print(f"rejection rate at alpha 0.05 under the null: {rate:.3f}")
    assert 0.02 <= rate <= 0.08


@pytest.mark.heavy  # CI time; nightly's reference_model test keeps the mechanics in the default run
@pytest.mark.timeout(1500)
def test_a_reference_model_adds_score_differences_that_tell_the_seen_passages_apart(inferred):
    """MIMIR's Ref: a model of the same family trained on the other passages only. Its loss says
    how hard a text is, so target minus reference isolates what the target learnt; the rerun
    resumes the target's scans and adds the reference model's (no neighbors)."""
    from tests.test_cli import scanner

    root = inferred["root"]
    train_tiny_gpt2(inferred["other"], inferred["passages"], root / "ref_model", target_loss=5.0, log=lambda m: None)
    res = scanner("infer", str(root / "suspect.jsonl"), "--reference", str(root / "reference.jsonl"), "--model",
                  str(root / "model"), "--out", str(root / "out"), "--neighbors", "4", "--reference-model",
                  str(root / "ref_model"), timeout=1200)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "0 to score" in res.stderr  # the target's scans resumed
    m = json.loads((root / "out" / "metrics.json").read_text())
    assert m["reference_model"] == str(root / "ref_model") and "loss minus reference model" in m["features"]
    assert m["p_value"] < 0.01
    target = RunFolder(root / "out" / "suspect").features()
    under_ref = RunFolder(root / "out" / "suspect_under_reference_model").features()
    assert under_ref["nb_dL"].list.len().max() == 0  # scored without neighbors
    seen = target["text"].is_in(list(inferred["members"])).cast(int).to_numpy()
    both = target.select("sample_id", "loss").join(under_ref.select("sample_id", ref=pl.col("loss")), on="sample_id")
    auc_loss = roc_auc(seen, -both["loss"].to_numpy())
    auc_ref = roc_auc(seen, (both["ref"] - both["loss"]).to_numpy())
    print(f"seen vs unseen suspect passages: LOSS AUC {auc_loss:.3f}, reference minus target {auc_ref:.3f}")
    assert auc_ref > auc_loss + 0.03


@pytest.mark.slow
def test_infer_refuses_a_distribution_shifted_pair_and_runs_no_model(tmp_path):
    from tests.test_cli import scanner

    from importlib.resources import files

    from tests.conftest import tiny_gpt2

    rows = [json.loads(line) for line in (files("scanner") / "data" / "wikimia_128.jsonl").read_text().splitlines()]
    for name, label in (("members", 1), ("non_members", 0)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": r["input"]}) + "\n" for r in rows
                                                        if r["label"] == label))
    tiny_gpt2(tmp_path / "model")
    res = scanner("infer", str(tmp_path / "members.jsonl"), "--reference", str(tmp_path / "non_members.jsonl"),
                  "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["verdict"] == "invalid: distribution shift" and m["p_value"] is None
    assert m["blind_baseline"]["auc_ci"][0] > 0.55
    assert not (tmp_path / "out" / "suspect").exists()  # no model was run
    assert "n-gram pointing to the suspect set" in (tmp_path / "out" / "report.md").read_text()


def test_infer_rejects_bad_options_in_one_line_before_any_work(tmp_path, capfd):
    from scanner.cli import main
    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "model")
    (tmp_path / "a.jsonl").write_text('{"text": "x y z"}\n')
    capfd.readouterr()  # building the model talks; the command must not
    for option, message in ((["--splits", "0"], "--splits must be at least 1"), (["--alpha", "1.5"], "alpha must lie")):
        code = main(["infer", str(tmp_path / "a.jsonl"), "--reference", str(tmp_path / "a.jsonl"), "--model",
                     str(tmp_path / "model"), "--out", str(tmp_path / "out"), *option])
        err = capfd.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
