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


@pytest.mark.parametrize("shard_size", [1000, 3])  # read whole, and cut into byte ranges
def test_csv_rows_are_counted_by_the_parser_and_an_unterminated_quote_is_quarantined(tmp_path, shard_size):
    """9 rows with an unterminated quote in row 4 used to read 4 (the rest swallowed silently); a
    ragged CSV with quotes inside fields read 23 of its 31 rows."""
    from scanner.readers import records  # what the Ray read tasks read
    from scanner.shards import plan_file

    def rows(path):
        [f] = list_inputs([str(path)])
        got = [r for s in plan_file(f, shard_size) for r in records(s)]
        return [i for i, rec, _ in got if rec], {i: why for i, rec, why in got if why}

    texts = [f"passage {i}" for i in range(9)]
    lines = [f"{t},{i % 2}" for i, t in enumerate(texts)]
    lines[3] = '"an unterminated passage,1'
    broken = tmp_path / "broken.csv"
    broken.write_text("text,label\n" + "\n".join(lines) + "\n")
    kept, bad = rows(broken)
    assert kept == [1, 2, 3] and list(bad) == [4] and "unterminated quote" in bad[4] and "(6 lines)" in bad[4]

    ragged_lines = []
    for i in range(31):  # short rows, long rows, a quote inside a field (literal: it opens nothing)
        ragged_lines.append([f'a 5" nail {i},1', f"short {i}", f"x {i},0,extra", f'"quoted, fine {i}",1'][i % 4])
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\n" + "\n".join(ragged_lines) + "\n")
    kept, bad = rows(ragged)
    assert len(kept) + len(bad) == 31  # read = kept + quarantined
    assert sorted(bad) == [i + 1 for i in range(31) if i % 4 == 2] and all("malformed CSV: 3 fields" in w for w in bad.values())
    assert len(kept) == 31 - 8


def test_a_csv_whose_header_never_closes_its_quote_is_one_line(tmp_path, capfd):
    data = tmp_path / "h.csv"
    data.write_text('"text,label\na,1\nb,0\n')
    _one_line_error(capfd, main(["baseline", str(data), "--out", str(tmp_path / "b")]), "the header row: unterminated quote")


def test_out_on_a_read_only_file_system_is_refused_before_any_work(tmp_path):
    """The baseline used to work for 24 s and then end in a traceback."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a read-only file system privately")
    data, ro = _jsonl(tmp_path / "d.jsonl"), tmp_path / "ro"
    ro.mkdir()
    script = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} || exit 99; "
              f"exec {sys.executable} -m scanner.cli baseline {data} --out {ro}/b")
    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if res.returncode == 99 or "unshare:" in res.stderr:
        pytest.skip(f"cannot mount a private read-only file system here: {res.stderr.strip()}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "cannot be written (a read-only file system" in lines[0], res.stderr
    assert not (ro / "b").exists()


@pytest.mark.timeout(300)
def test_an_input_whose_rows_are_all_quarantined_is_one_line(tmp_path, tiny_lm, ray_local, capfd):
    """Used to end in a Ray task's traceback saying to run `scanner scan` first."""
    data = tmp_path / "blank.jsonl"
    data.write_text("".join(json.dumps({"text": " " * (i % 3)}) + "\n" for i in range(12)))
    code = main(["scan", str(data), "--model", tiny_lm["model"], "--neighbors", "1", "--out", str(tmp_path / "r")])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err and "ray::" not in err, err
    assert err.strip().splitlines()[-1] == f"scanner: error: no usable row in {data}: {{'empty text': 12}}"
    from scanner.errors import InputError
    from scanner.runfolder import RunFolder

    with pytest.raises(InputError, match=r"no usable row: each of the 12 rows read was quarantined \({'empty text': 12}\)"):
        RunFolder(str(tmp_path / "r")).features()
