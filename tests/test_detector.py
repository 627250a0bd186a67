import json
import pickle
import shutil

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
import torch

from scanner.detector.data import grouped_split
from scanner.detector.mlp import MLPDetector
from scanner.train import train_detectors
from scanner.evaluate import evaluate, roc_curves, write_evaluation_report
from scanner.metrics import roc_auc
from scanner.report import draw_roc, fmt, fmt_auc
from scanner.runfolder import RunFolder
from scanner.scoring import registry
from tests.fake_scan import write_fake_run


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fake_run")
    write_fake_run(run, n=1200)
    return run


def test_grouped_split_puts_each_sample_in_exactly_one_part(fake_run):
    df = RunFolder(fake_run).features()
    parts = grouped_split(df, seed=0)
    stacked = np.vstack(list(parts.values()))
    assert (stacked.sum(0) == 1).all()  # every sample in exactly one part
    assert abs(parts["test"].mean() - 0.2) < 0.05 and abs(parts["train"].mean() - 0.5) < 0.05
    again = grouped_split(df.reverse(), seed=0)  # row order does not matter, only the ids
    ids = df["sample_id"].to_numpy()
    assert set(ids[parts["test"]]) == set(df.reverse()["sample_id"].to_numpy()[again["test"]])
    assert set(ids[grouped_split(df, seed=1)["test"]]) != set(ids[parts["test"]])


@pytest.mark.parametrize("kind", ["fimmia", "tabular"])
def test_detectors_learn_calibrate_and_round_trip_without_pickle(fake_run, tmp_path, monkeypatch, kind):
    df = RunFolder(fake_run).features()
    parts = {k: df.filter(pl.Series(v)) for k, v in grouped_split(df, seed=0).items()}
    det = MLPDetector(kind=kind, target_fpr=0.05).fit(parts["train"], parts["val"])
    auc = roc_auc(parts["test"]["label"].to_numpy(), det.predict_proba(parts["test"]))
    assert auc > 0.8, auc
    det.calibrate(parts["calib"])
    # the threshold flags about 5% of non-members it never saw
    y_test = parts["test"]["label"].to_numpy()
    observed = det.flag(parts["test"])[y_test == 0].mean()
    assert 0.0 <= observed <= 0.12, observed
    det.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.json", f"{kind}.safetensors"]

    def no_unpickling(*a, **k):
        raise AssertionError("loading a detector must not unpickle")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    loaded = MLPDetector.load(tmp_path, kind)
    np.testing.assert_array_equal(loaded.predict_proba(parts["test"]), det.predict_proba(parts["test"]))
    assert loaded.threshold == det.threshold


def test_threshold_calibration_hits_the_target_fpr_on_large_held_out_sets(tmp_path):
    """A threshold set on some non-members flags the target share of others. One split's observed
    FPR varies by ~0.014 (about 500 non-members on each side), so the test averages 20 random
    splits of the held-out samples into calibration and test halves, under one fitted detector."""
    write_fake_run(tmp_path, n=6000, k=2, seed=3)
    df = RunFolder(tmp_path).features()
    parts = {k: df.filter(pl.Series(v)) for k, v in grouped_split(df, seed=0).items()}
    det = MLPDetector(kind="tabular", target_fpr=0.05, max_epochs=30).fit(parts["train"], parts["val"])
    held = pl.concat([parts["calib"], parts["test"]])
    rng = np.random.default_rng(0)
    observed = []
    for _ in range(20):
        half = pl.Series(rng.random(held.height) < 0.5)
        det.calibrate(held.filter(half))
        test = held.filter(~half)
        observed.append(det.flag(test)[test["label"].to_numpy() == 0].mean())
    assert abs(np.mean(observed) - 0.05) < 0.01, observed
    assert max(abs(o - 0.05) for o in observed) < 0.05, observed


@pytest.mark.slow
def test_train_and_evaluate_write_consistent_reports(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run, n=800, signal=1.5)
    info = train_detectors(str(run), str(tmp_path / "model"), seed=0)
    assert set(info["detectors"]) == {"fimmia", "tabular"} and 0.3 < info["baseline"]["auc"] < 0.7
    assert (tmp_path / "model" / "baseline_scores.parquet").exists()
    said = []
    ev = evaluate(run, tmp_path / "model", n_boot=200, progress=said.append)
    write_evaluation_report(ev, tmp_path / "report")
    m = ev.metrics
    assert not any("blind baseline" in msg for msg in said)  # reused from the training task
    split = json.loads((tmp_path / "model" / "split.json").read_text())
    assert m["n"] == len(split["test_ids"]) and "held out" in m["evaluated_on"]
    assert {"loss", "min_k_20", "min_k_pp_20", "neighborhood", "fimmia detector", "tabular detector",
            "blind baseline"} <= set(m["scores"])
    # the fake texts carry no membership signal: the model-based scores beat the blind baseline
    assert m["baseline_verdict"]["status"] == "usable" and m["mia_beats_baseline"]
    # the baseline's interval on the test samples covers its cross-validation too (the saved folds)
    base = m["scores"]["blind baseline"]
    assert base["auc_ci"][0] == min(base["auc_ci_bootstrap"][0], base["auc_ci_cv"][0])
    assert base["auc_ci"][1] == max(base["auc_ci_bootstrap"][1], base["auc_ci_cv"][1])
    best_detector = max(m["scores"]["fimmia detector"]["auc"], m["scores"]["tabular detector"]["auc"])
    best_classic = max(s["auc"] for name, s in m["scores"].items() if "detector" not in name and name != "blind baseline")
    assert best_detector >= best_classic - 0.01
    md = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for name, s in saved["scores"].items():
        assert f"| {name} | {fmt_auc(s)} |" in md
        assert fmt_auc(s) in html
    for t in saved["thresholds"].values():
        assert fmt(t["observed_fpr"]) in md
    assert saved["conclusion"] in md and {r["group"] for r in saved["by_source"]} == {"web", "books"}
    for png in ("headline_roc.png", "roc.png", "histograms.png", "histograms_others.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png
    assert html.index("headline_roc.png") < html.index("roc_loglog.png")  # the answer's figure comes first
    curves = roc_curves(m, ev.labels, ev.scores)  # one per family, the detectors and the baseline, none alike
    families = {s.family or s.name for s in registry.scores() if s.name in m["scores"]}
    assert list(curves)[0] == m["best_mia"] and list(curves)[-1] == "blind baseline"
    assert len(curves) == len(families) + 3 and len(families) >= 9, families
    _, ax = plt.subplots()
    draw_roc(ax, curves, loglog=False)
    drawn = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(drawn) == len(curves) == len(set(drawn))
    assert "<details>" in html and md.index(saved["conclusion"]) < md.index("| score |")
    # runs are matched by run_id: the same run under another path is still held out, another run is not
    shutil.copytree(run, tmp_path / "mounted_elsewhere")
    again = evaluate(tmp_path / "mounted_elsewhere", tmp_path / "model", n_boot=50).metrics
    assert again["n"] == m["n"] and again["scores"]["loss"]["auc"] == m["scores"]["loss"]["auc"]
    write_fake_run(tmp_path / "another", n=800, signal=1.5)  # same rows, another run
    other = evaluate(tmp_path / "another", tmp_path / "model", n_boot=50).metrics
    assert other["n"] == 800 and "another run" in other["evaluated_on"]


@pytest.mark.slow
def test_leaky_text_split_makes_mia_numbers_not_evidence(tmp_path):
    run = tmp_path / "run"
    write_fake_run(run, n=500, signal=0.0, shift_text=True)  # no model signal, leaky texts
    m = evaluate(run, None, n_boot=200).metrics
    assert m["baseline_verdict"]["status"] == "leaky"
    assert not m["mia_beats_baseline"] and "NOT evidence" in m["conclusion"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_and_evaluate_commands_on_local_ray(tmp_path):
    import ray

    from scanner.cli import main

    run = tmp_path / "run"
    write_fake_run(run, n=400)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    try:
        assert main(["train", str(run), "--out", str(tmp_path / "model"), "--target-fpr", "0.05"]) == 0
        assert json.loads((tmp_path / "model" / "fimmia.json").read_text())["target_fpr"] == 0.05
        unlabelled = tmp_path / "unlabelled"
        write_fake_run(unlabelled, n=50, labelled=False)
        assert main(["train", str(unlabelled), "--out", str(tmp_path / "m2")]) == 2  # clear error, no traceback
    finally:
        ray.shutdown()
    assert main(["evaluate", str(run), "--detector", str(tmp_path / "model"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").exists()
    assert main(["evaluate", str(tmp_path / "nothing"), "--out", str(tmp_path / "rep2")]) == 2


def _auc_of_best_single(train, test):
    from scanner.detector.data import available_classic, member_score

    best = max(available_classic(train), key=lambda c: roc_auc(train["label"].to_numpy(), member_score(train, c)))
    return best, roc_auc(test["label"].to_numpy(), member_score(test, best))


def test_tabular_form_is_a_learned_combination_when_signals_add_up(tmp_path):
    from scanner.detector.select import fit_detector

    y = write_fake_run(tmp_path, n=1200, signal=0.5)  # the neighbor gaps carry the signal
    loss = 3.5 - 0.3 * y + np.random.default_rng(1).normal(0, 0.3, len(y))  # and, independently, the loss
    df = RunFolder(tmp_path).features().with_columns(loss=pl.Series(loss))
    parts = {k: df.filter(pl.Series(v)) for k, v in grouped_split(df, seed=0).items()}
    det = fit_detector("tabular", parts["train"], parts["val"])
    assert det.info["form"] in ("mlp", "linear"), det.info["form_estimates"]
    _, single = _auc_of_best_single(parts["train"], parts["test"])
    auc = roc_auc(parts["test"]["label"].to_numpy(), det.predict_proba(parts["test"]))
    assert auc > single + 0.03, (auc, single)


def test_tabular_form_falls_back_to_the_best_single_score_on_few_samples(tmp_path):
    from scanner.detector.select import fit_detector

    write_fake_run(tmp_path, n=300, seed=5, signal=2.0)
    rng = np.random.default_rng(0)
    perm = pl.Series(rng.permutation(300))
    df = RunFolder(tmp_path).features()
    # only loss (and the Min-K% scores drawn from it) carry signal; the neighbor features are noise
    df = df.with_columns(*(pl.col(c).gather(perm) for c in ("nb_dL", "nb_cos_dist", "nb_l2", "neighborhood")))
    parts = {k: df.filter(pl.Series(v)) for k, v in grouped_split(df, seed=0).items()}
    det = fit_detector("tabular", parts["train"], parts["val"])
    estimates = det.info["form_estimates"]
    assert {"mlp", "linear", "loss", "neighborhood"} <= set(estimates)
    assert estimates[det.info["form"]] == max(estimates.values())
    assert det.info["form"] not in ("mlp", "linear"), estimates
    best, single = _auc_of_best_single(parts["train"], parts["test"])
    auc = roc_auc(parts["test"]["label"].to_numpy(), det.predict_proba(parts["test"]))
    assert auc == pytest.approx(roc_auc(parts["test"]["label"].to_numpy(),
                                        member_score_of(parts["test"], det.info["form"])))
    assert auc >= single - 0.02, (auc, best, single)
    loaded = MLPDetector.from_state(*det.state())  # the one-score form round-trips
    np.testing.assert_array_equal(loaded.predict_proba(parts["test"]), det.predict_proba(parts["test"]))


def test_the_cross_fitted_tabular_detector_keeps_the_saved_form_and_ranks_as_its_score(tmp_path):
    """Cross-fitting refits the saved form, never chooses it again per fold; a single-score form
    ranks all samples as the score does (per-fold logistic maps, pooled, would not), a learned one
    gives every sample a probability from a fold that never saw it."""
    from scanner.train import cross_fitted_scores

    write_fake_run(tmp_path, n=300, seed=5, signal=2.0)
    df = RunFolder(tmp_path).features()
    y = df["label"].to_numpy()
    single = cross_fitted_scores(df, 0, 5, "min_k_20")
    assert single["sample_id"].to_list() == df["sample_id"].to_list()
    assert roc_auc(y, single["tabular"].to_numpy()) == roc_auc(y, member_score_of(df, "min_k_20"))
    learned = cross_fitted_scores(df, 0, 5, "linear")
    p = learned["tabular"].to_numpy()
    assert np.all((p >= 0) & (p <= 1)) and roc_auc(y, p) > 0.6, roc_auc(y, p)
    np.testing.assert_array_equal(learned["fimmia"].to_numpy(), single["fimmia"].to_numpy())


def member_score_of(df, name):
    from scanner.detector.data import member_score

    return member_score(df, name)


def test_the_fimmia_detector_weighs_neighbors_by_their_kind(tmp_path):
    """The signal sits in one kind's neighbors (an "invert" that moves members' loss) and the other
    kind is wide noise: told each row's kind, the detector weighs the rows apart and ranks better
    than without. The kinds travel with the saved detector; a kind it never saw is refused."""
    from scanner.errors import InputError

    write_fake_run(tmp_path / "run", n=1200, signal=0.0)
    df = RunFolder(tmp_path / "run").features()
    rng = np.random.default_rng(1)
    y = df["label"].to_numpy()
    dl = rng.normal(0, 1.0, (len(y), 6))
    dl[:, 1::2] += 0.6 * y[:, None]
    dl[:, 0::2] *= 3
    df = df.with_columns(pl.Series("nb_kinds", [["noise", "invert"] * 3] * len(y)), pl.Series("nb_dL", dl.tolist()))
    parts = {k: df.filter(pl.Series(v)) for k, v in grouped_split(df, seed=0).items()}
    blind = {k: v.with_columns(pl.Series("nb_kinds", [["x"] * 6] * v.height)) for k, v in parts.items()}
    aucs = {}
    for name, frame in (("kinds", parts), ("blind", blind)):
        det = MLPDetector("fimmia").fit(frame["train"], frame["val"])
        aucs[name] = roc_auc(frame["test"]["label"].to_numpy(), det.predict_proba(frame["test"]))
    assert aucs["kinds"] > aucs["blind"] + 0.05, aucs  # measured 0.758 vs 0.644
    assert det.neighbor_kinds is None  # one kind: nothing to encode, the inputs of detectors before kinds
    det = MLPDetector("fimmia").fit(parts["train"], parts["val"])
    det.save(tmp_path / "det")
    loaded = MLPDetector.load(tmp_path / "det", "fimmia")
    assert loaded.neighbor_kinds == ["invert", "noise"]
    np.testing.assert_array_equal(loaded.predict_proba(parts["test"]), det.predict_proba(parts["test"]))
    with pytest.raises(InputError, match=r"neighbor kinds \['x'\] were not among"):
        loaded.predict_proba(blind["test"])
