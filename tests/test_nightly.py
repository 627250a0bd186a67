"""`scanner nightly` (= jobs/nightly.py) on local Ray: exit 0 when clean, 1 when an eval set is
contaminated or worse than the previous night, 2 when a set cannot be checked."""

import json
from importlib import resources

import pytest
import yaml

from scanner.cli import main
from scanner.nightly import resolve_reference_model
from tests.conftest import train_tiny_detector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm, ray_local):
    root = tmp_path_factory.mktemp("nightly")
    detector = train_tiny_detector(root, tiny_lm, neighbors=2)
    unseen, seen = root / "unseen.jsonl", root / "seen.jsonl"
    unseen.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_lm["non_members"][100:130]))
    seen.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_lm["members"][100:130]))
    return {"root": root, "detector": detector, "unseen": str(unseen), "seen": str(seen)}


def nightly(setup, run: str, sets: list[dict], **options) -> tuple[int, dict]:
    config = setup["root"] / f"{run}.yaml"
    config.write_text(yaml.safe_dump({"detector": setup["detector"], "eval_sets": sets, "actors": 1, **options}))
    code = main(["nightly", "--config", str(config), "--out", str(setup["root"] / "nights"), "--run-name", run])
    metrics = setup["root"] / "nights" / run / "metrics.json"
    return code, json.loads(metrics.read_text()) if metrics.exists() else {}


def test_clean_then_worse_then_contaminated_then_error(setup):
    wikimia = str(resources.files("scanner") / "data" / "wikimia_128.jsonl")
    code, m = nightly(setup, "n1", [{"name": "eval_a", "data": setup["unseen"]}, {"name": "wikimia", "data": [wikimia]}])
    assert code == 0, m
    a, w = m["sets"]["eval_a"], m["sets"]["wikimia"]
    assert a["status"] == "clean" and a["contamination"]["ci"][0] <= 0.05 and a["previous_estimate"] is None
    # a labelled set gets the leakage baseline: WikiMIA's split is exposed without any model
    assert w["status"] == "clean" and w["labelled"]["baseline_verdict"] == "leaky"
    assert w["labelled"]["baseline_auc"] > 0.9 and not w["labelled"]["mia_beats_baseline"]
    assert (setup["root"] / "nights" / "n1" / "report.html").exists()
    md = (setup["root"] / "nights" / "n1" / "report.md").read_text()
    assert md.startswith("# Nightly") and "**All 2 eval sets clean. Exit code 0.**" in md
    assert md.index("headline_fractions.png") < md.index("| eval set |")

    # the same eval set name now holds texts the model saw: worse than last night
    code, m = nightly(setup, "n2", [{"name": "eval_a", "data": setup["seen"]}], contamination_threshold=0.99)
    a = m["sets"]["eval_a"]
    assert code == 1 and a["status"] == "worse", a
    assert m["previous"].endswith("n1/metrics.json") and a["change"] > 0.5

    code, m = nightly(setup, "n3", [{"name": "eval_a", "data": setup["seen"]}])
    assert code == 1 and m["sets"]["eval_a"]["status"] == "contaminated"
    # the trend of each set over the runs in the folder: n1 (unseen), n2 and n3 (seen)
    assert [p["run"] for p in m["trend"]["eval_a"]] == ["n1", "n2", "n3"]
    assert m["trend"]["eval_a"][0]["estimate"] < 0.3 < m["trend"]["eval_a"][-1]["estimate"]
    assert (setup["root"] / "nights" / "n3" / "trend.png").stat().st_size > 1000
    assert m["sets"]["eval_a"]["contamination"]["ci"][0] > 0.5

    # a set that cannot be read: exit 2, and the other sets are still checked and reported
    code, m = nightly(setup, "n4", [{"name": "eval_a", "data": setup["unseen"]},
                                    {"name": "gone", "data": str(setup["root"] / "missing.jsonl")}])
    assert code == 2
    assert m["sets"]["gone"]["status"] == "error" and "missing.jsonl" in m["sets"]["gone"]["error"]
    assert m["sets"]["eval_a"]["status"] == "clean"  # back to unseen texts (n3 was contaminated)
    assert "missing.jsonl" in (setup["root"] / "nights" / "n4" / "report.md").read_text()


def test_a_set_with_a_reference_gets_a_p_value_and_a_shifted_pair_is_invalid(setup, tiny_lm, capsys):
    root = setup["root"]
    reference = root / "reference.jsonl"
    reference.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_lm["non_members"][130:160]))
    rows = [json.loads(line) for line in (resources.files("scanner") / "data" / "wikimia_128.jsonl").read_text().splitlines()]
    for name, label in (("old", 1), ("new", 0)):
        (root / f"wikimia_{name}.jsonl").write_text("".join(json.dumps({"text": r["input"]}) + "\n" for r in rows
                                                            if r["label"] == label))
    training = root / "training.jsonl"  # the model's training text, as an overlap corpus
    training.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(tiny_lm["members"])))
    # the seen fraction alone would not call it (threshold 0.99): the set test does
    code, m = nightly(setup, "r1", [{"name": "seen", "data": setup["seen"], "reference": str(reference),
                                     "corpus": str(training)},
                                    {"name": "unseen", "data": setup["unseen"], "reference": str(reference)},
                                    {"name": "shifted", "data": str(root / "wikimia_old.jsonl"),
                                     "reference": str(root / "wikimia_new.jsonl")}], contamination_threshold=0.99)
    seen, unseen, shifted = (m["sets"][k] for k in ("seen", "unseen", "shifted"))
    assert seen["status"] == "contaminated" and seen["inference"]["p_holm"] < 0.01, seen
    assert seen["overlap"]["share_whole"] == 1.0 and seen["overlap"]["items"] == 30  # data evidence, same items
    assert unseen["status"] == "clean" and unseen["inference"]["p_holm"] > 0.05, unseen
    # the detector's TPR with the FPR measured on the reference: all seen, none seen
    assert seen["inference"]["seen_fraction"]["ci"][1] >= 0.95 and seen["inference"]["seen_fraction"]["estimate"] > 0.6
    assert unseen["inference"]["seen_fraction"]["ci"][0] <= 0.05
    assert shifted["status"] == "invalid" and shifted["inference"]["p_value"] is None
    assert code == 2  # an invalid set is not a verdict
    report = (root / "nights" / "r1" / "report.md").read_text()
    assert "set test p, Holm" in report and "invalid: the texts alone differ" in report

    # the previous checkpoint as reference model: its scans of the same files are reused, no model runs twice
    capsys.readouterr()
    code, m = nightly(setup, "r2", [{"name": "seen", "data": setup["seen"], "reference": str(reference)}],
                      contamination_threshold=0.99, reference_model="previous")
    inference = m["sets"]["seen"]["inference"]
    assert code == 1 and inference["reference_model"] == m["model"]
    assert "loss minus reference model" in inference["features"]
    assert "seen: reusing the previous run's scans" in capsys.readouterr().err
    assert not (root / "nights" / "r2" / "sets" / "seen" / "suspect_under_reference_model").exists()
    assert resolve_reference_model("previous", None, None) is None  # the first night has no previous checkpoint


def test_bad_config_exits_2_naming_the_problem(setup, capsys):
    config = setup["root"] / "bad.yaml"
    config.write_text(yaml.safe_dump({"eval_sets": [{"name": "x", "data": setup["unseen"]}]}))
    assert main(["nightly", "--config", str(config), "--out", str(setup["root"] / "bad")]) == 2
    assert "detector" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"detector": setup["detector"], "eval_sets": [{"name": "x"}]}))
    assert main(["nightly", "--config", str(config), "--out", str(setup["root"] / "bad")]) == 2
    capsys.readouterr()
    config.write_text(yaml.safe_dump({"detector": setup["detector"], "neighbors": 7,
                                      "eval_sets": [{"name": "x", "data": setup["unseen"]}]}))
    code = main(["nightly", "--config", str(config), "--out", str(setup["root"] / "bad"), "--run-name", "r"])
    # features the detector was not trained on: refused before any set is scanned
    assert code == 2 and "neighbors 2 (trained) vs 7" in capsys.readouterr().err
    assert not (setup["root"] / "bad" / "r").exists()
