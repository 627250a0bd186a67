"""Hostile inputs that used to end in a traceback, a path outside --out or data read many times
(issue 33): each now gets one line and exit 2 (130 for Ctrl-C), before any work."""

import json
import os
import signal
import subprocess
import sys

import pytest

from scanner.cli import main
from scanner.inputs import list_inputs
from scanner.toy import english_passages


def _jsonl(path, n=6):
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(english_passages()[:n])))
    return path


def _one_line_error(capfd, code, expected):
    err = capfd.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err


def test_a_folder_linking_to_itself_is_refused_and_a_folder_linked_twice_is_read_once(tmp_path, capfd):
    corpus = tmp_path / "corpus"
    (corpus / "part").mkdir(parents=True)
    _jsonl(corpus / "part" / "a.jsonl")
    (corpus / "again").symlink_to(corpus / "part")  # the same folder by a second path: read once
    (corpus / "a_link.jsonl").symlink_to(corpus / "part" / "a.jsonl")  # the same file by a link: read once
    assert [f.uri for f in list_inputs([str(corpus)])] == [str((corpus / "part" / "a.jsonl").resolve())]
    (corpus / "part" / "loop").symlink_to(corpus)  # used to be read at 41 depths: 40 times the rows
    _one_line_error(capfd, main(["baseline", str(corpus), "--out", str(tmp_path / "b")]), "a symlink loop")


def test_a_file_that_is_a_symlink_loop_is_one_line(tmp_path, capfd):
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    _one_line_error(capfd, main(["baseline", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "b")]), "cannot be read")


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capfd):
    data, taken = _jsonl(tmp_path / "d.jsonl"), tmp_path / "taken"
    taken.write_text("not a folder")
    for argv in (["baseline", str(data)], ["scan", str(data), "--model", "m"], ["overlap", str(data), "--corpus", str(data)],
                 ["nightly", "--config", str(data)]):
        _one_line_error(capfd, main([*argv, "--out", str(taken)]), "is a file, not a folder")


def test_config_values_of_the_wrong_type_are_one_line(tmp_path, capfd):
    from scanner.config import load_config
    from scanner.errors import InputError

    config = tmp_path / "c.yaml"
    config.write_text('neighbors: "lots"\n')
    with pytest.raises(InputError, match="neighbors = 'lots': must be int"):
        load_config(str(config), {"model": "m"})
    config.write_text("enforce_eager: 1\n")
    with pytest.raises(InputError, match="enforce_eager = 1: must be bool or None"):
        load_config(str(config), {"model": "m"})
    config.write_text("kv_cache_gib: 2\nneighbors: 3\n")  # an int is a fine float
    assert load_config(str(config), {"model": "m"}).kv_cache_gib == 2
    nightly = tmp_path / "n.yaml"
    nightly.write_text(f"detector: {tmp_path}\ncontamination_threshold: high\neval_sets: [{{name: a, data: [x]}}]\n")
    _one_line_error(capfd, main(["nightly", "--config", str(nightly), "--out", str(tmp_path / "n")]),
                    "contamination_threshold must be a number, not 'high'")


def test_a_nightly_run_name_cannot_leave_out(tmp_path, capfd):
    from scanner.nightly import check_run_name

    for name in ("../escaped", "a/b", "..", ".", "a\\b", ""):
        with pytest.raises(Exception, match="plain folder name"):
            check_run_name(name)
    assert check_run_name("2026-12-06T0100Z") == "2026-12-06T0100Z"


@pytest.mark.timeout(300)
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, tiny_lm):
    data = _jsonl(tmp_path / "d.jsonl", n=200)
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "scan", str(data), "--model", tiny_lm["model"],
                             "--out", str(tmp_path / "scan"), "--shard-size", "10"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    for line in proc.stderr:  # wait for the state we interrupt: shards being scored
        lines.append(line)
        if "scored" in line:
            break
    os.kill(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    assert rest.strip().splitlines()[-1] == "scanner: interrupted; run the same command again to resume"
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest[-3000:]


def test_identical_texts_in_both_classes_do_not_make_the_text_look_leaky():
    """60 texts each present twice, once as a member and once as a non-member, used to score AUC
    0.977 "leaky": each fold's models memorised one copy and met its twin in the test fold."""
    import numpy as np
    import polars as pl

    from scanner.baseline.run import run_baseline, text_groups

    texts = english_passages()[:60]
    samples = pl.DataFrame({"sample_id": [f"m{i}" for i in range(60)] + [f"n{i}" for i in range(60)],
                            "text": texts + [" ".join(t.split()) + " " for t in texts],  # whitespace aside
                            "label": [1] * 60 + [0] * 60, "source": ["x"] * 120})
    m = run_baseline(samples, seed=0, n_boot=200, n_jobs=2).metrics
    assert m["repeated_texts"] == {"texts_repeated": 60, "in_both_classes": 60}
    assert 0.4 <= m["auc"] <= 0.6 and m["verdict"]["status"] != "leaky", (m["auc"], m["verdict"])
    # distinct texts keep the folds they always had (no groups)
    assert text_groups(texts, np.array([1, 0] * 30)) == (None, {"texts_repeated": 0, "in_both_classes": 0})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_set_is_not_shown_seen_against_itself(tmp_path, tiny_lm):
    """`scanner infer X --reference X` used to say "invalid: distribution shift" (AUC 0.976)."""
    from tests.test_cli import scanner

    data = tmp_path / "x.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_lm["non_members"][:80]))
    res = scanner("infer", str(data), "--reference", str(data), "--model", tiny_lm["model"], "--neighbors", "2",
                  "--out", str(tmp_path / "inf"))
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "inf" / "metrics.json").read_text())
    assert m["verdict"] == "not shown" and m["blind_baseline"]["verdict"]["status"] != "shifted", m["blind_baseline"]
