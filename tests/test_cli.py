import json
import subprocess
import sys

import polars as pl
import pytest

from scanner.report import fmt, fmt_auc


def scanner(*args, cwd=None, timeout=600):
    """The CLI in a subprocess; the timeout only guards against a hang (the demo alone takes ~7
    minutes on a slow 2-core machine, more when it shares the cores)."""
    return subprocess.run([sys.executable, "-m", "scanner.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def shifted_corpus(path, n=120, seed=0):
    """Members mention older years and other words than non-members: clearly leaky."""
    import random

    rnd = random.Random(seed)
    words = "river city market school music science garden station bridge council".split()
    rows = []
    for i in range(n):
        member = i % 2
        year = rnd.randint(1990, 2012) if member else rnd.randint(2022, 2024)
        body = " ".join(rnd.choice(words) for _ in range(25))
        rows.append({"id": f"doc{i}", "text": f"In {year} the {body}.", "label": member})
    rows.append({"id": "empty", "text": "   ", "label": 1})  # quarantined, not lost
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_baseline_command_writes_consistent_reports(tmp_path):
    data = shifted_corpus(tmp_path / "shifted.jsonl")
    out = tmp_path / "out"
    res = scanner("baseline", str(data), "--out", str(out), "--folds", "3", "--n-boot", "200")
    assert res.returncode == 0, res.stderr
    assert "fold 3/3" in res.stderr and "121 rows read: 120 kept, 1 quarantined" in res.stderr  # progress
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 120 and m["n_members"] == 60
    assert m["auc"] > 0.9 and m["verdict"]["status"] == "leaky"
    assert set(m["tpr_at_fpr"]) == {"0.001", "0.01", "0.05"} and len(m["auc_ci"]) == 2
    assert m["corpus"] == {"read": 121, "kept": 120, "quarantined": 1,
                           "quarantined_by_reason": {"empty text": 1}, "files": 1}
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        assert fmt_auc(m) in text  # the headline numbers are the ones in metrics.json
        assert fmt_auc(m["models"]["random_forest"]) in text
        assert fmt(m["tpr_at_fpr"]["0.05"]) in text
        assert "Verdict: leaky" in text
    assert html.count("data:image/png;base64,") == 3  # the headline AUCs, linear and log-log ROC
    assert md.index("Verdict: leaky") < md.index("headline_auc.png") < md.index("roc.png")
    assert (out / "roc.png").stat().st_size > 1000 and (out / "roc_loglog.png").stat().st_size > 1000
    scores = pl.read_parquet(out / "scores.parquet")
    assert scores.height == 120 and scores["sample_id"].n_unique() == 120
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert quarantine["reason"].to_list() == ["empty text"] and quarantine["sample_id"].to_list() == ["empty"]
    assert f"AUC {m['auc']:.3f}" in res.stdout and str(out / "report.html") in res.stdout


def test_bad_label_exits_2_naming_file_row_and_value(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "yes"}\n')
    res = scanner("baseline", str(data), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "bad.jsonl row 2" in res.stderr and "'yes'" in res.stderr and "Traceback" not in res.stderr


def test_unlabelled_data_and_bad_options_exit_2(tmp_path):
    data = tmp_path / "u.jsonl"
    data.write_text('{"text": "a"}\n')
    res = scanner("baseline", str(data), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "have no label" in res.stderr
    res = scanner("baseline", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "no such file" in res.stderr
    res = scanner("baseline", str(data), "--out", str(tmp_path / "out"), "--folds", "1")
    assert res.returncode == 2 and "--folds must be at least 2" in res.stderr
    res = scanner("baseline", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"), "--cv-repeats", "0")
    assert res.returncode == 2 and "--cv-repeats must be at least 1" in res.stderr  # before reading anything


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_runs_the_embedded_default(tmp_path):
    """What the README says of the demo: known membership, the detectors on held-out samples as
    good as the best classic score; every member occurs whole in the model's training text;
    WikiMIA under the same model: the blind baseline exposes the split, MIA numbers are no evidence."""
    import polars as pl

    from scanner.runfolder import RunFolder

    demo = tmp_path / "demo"  # given as a file:// URI (tests/test_uri_outputs.py: the other commands)
    res = scanner("demo", "--out", f"file://{demo}", "--neighbors", "12", timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    labels = RunFolder(demo / "scan_known").features(columns=["sample_id", "label"])
    items = labels.join(pl.read_parquet(demo / "overlap_known" / "items.parquet"), on="sample_id")
    members = items.filter(pl.col("label") == 1)
    assert items.height == labels.height and members.height > 150 and (members["coverage"] == 1.0).all()
    wikimia = json.loads((demo / "eval_wikimia" / "metrics.json").read_text())
    assert wikimia["baseline_verdict"]["status"] == "leaky" and not wikimia["mia_beats_baseline"]
    assert wikimia["scores"]["blind baseline"]["auc_ci"][0] > 0.9
    known = json.loads((tmp_path / "demo" / "eval_known" / "metrics.json").read_text())
    scores = known["scores"]
    best_detector = max(scores["fimmia detector"]["auc"], scores["tabular detector"]["auc"])
    best_classic = max(s["auc"] for n, s in scores.items() if "detector" not in n and n != "blind baseline")
    assert best_classic > 0.85 and best_detector >= best_classic - 0.01, (best_detector, best_classic)
    assert "held out" in known["evaluated_on"] and known["mia_beats_baseline"]
    assert all(len(s["auc_ci"]) == 2 for s in scores.values())
    # data evidence: every member occurs whole in the model's training text; each score's AUC
    # against that truth stands beside its AUC against the labels
    o = known["overlap"]
    assert o["members_whole"] == known["n_members"] and o["whole_in_corpus"] >= known["n_members"]
    assert all(r["coverage"] < 1 for r in o["non_members_with_overlap"])
    assert o["auc"]["loss"]["vs_whole_in_corpus"] is not None
    assert "AUC vs whole item in corpus" in (tmp_path / "demo" / "eval_known" / "report.md").read_text()
    wikimia = json.loads((tmp_path / "demo" / "eval_wikimia" / "metrics.json").read_text())
    assert wikimia["baseline_verdict"]["status"] == "leaky" and not wikimia["mia_beats_baseline"]
    assert "NOT evidence" in wikimia["conclusion"] and wikimia["n"] == 250
    assert res.stdout.count("report:") == 2
