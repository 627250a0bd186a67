"""One run per folder (issue 33, hole 1): two scans into one --out with different settings used to
both exit 0 and leave shards of both in it under two run ids. A folder is now claimed before any
work: a second process is refused while the first lives, a killed run's claim is taken over, and
other inputs join a finished run only with --add."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import polars as pl
import pytest

from scanner.errors import InputError
from scanner.inputs import list_inputs
from scanner.lock import LOCK, STALE_S, FolderLock
from scanner.runfolder import RunFolder
from scanner.shards import shard_name
from scanner.storage import Store
from scanner.toy import english_passages


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(store, **fields):
    held = {"token": "t0", "command": "scan", "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.time(), "heartbeat": time.time()} | fields
    store.write_bytes(LOCK, json.dumps(held).encode())


def test_a_held_folder_refuses_a_second_holder_until_released(tmp_path):
    store = Store(str(tmp_path / "r"))
    first = FolderLock(store, "scan")
    first.acquire()
    with pytest.raises(InputError, match=r"is in use by another run \(scan, pid \d+ on .*\); wait for it to end"):
        FolderLock(store, "sweep").acquire()
    first.release()
    assert not store.exists(LOCK)
    with FolderLock(store, "sweep"):
        assert json.loads(store.read_bytes(LOCK))["command"] == "sweep"


def test_a_lock_left_by_a_killed_run_is_taken_over_and_a_live_one_is_not(tmp_path):
    store = Store(str(tmp_path / "r"))
    _plant(store, pid=_dead_pid())  # this host, its process gone: stale at once
    with FolderLock(store, "scan") as lock:
        assert json.loads(store.read_bytes(LOCK))["token"] == lock.token
    _plant(store, host="another-node", heartbeat=time.time() - STALE_S - 1)  # no heartbeat for too long
    with FolderLock(store, "scan") as lock:
        assert json.loads(store.read_bytes(LOCK))["token"] == lock.token
    for garbage in (b"garbage", b'{"token": "x"}', b"[1]"):  # not a lock this code wrote
        store.write_bytes(LOCK, garbage)
        with FolderLock(store, "scan"):
            pass
    _plant(store, host="another-node", heartbeat=time.time() - 5)  # alive elsewhere
    with pytest.raises(InputError, match="in use by another run"):
        FolderLock(store, "scan").acquire()
    assert json.loads(store.read_bytes(LOCK))["token"] == "t0"  # and left as it was


def test_a_lock_on_an_object_store_uri(tmp_path):
    pytest.importorskip("fsspec")
    store = Store("memory://locks/r")
    with FolderLock(store, "scan"):
        with pytest.raises(InputError, match="in use by another run"):
            FolderLock(store, "scan").acquire()
    assert not store.exists(LOCK)


def test_other_inputs_join_a_run_only_when_added_and_keep_their_sources(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _jsonl(tmp_path / "a" / "x.jsonl", ["one"])
    failed = _jsonl(tmp_path / "a" / "y.jsonl", ["three"])
    second = _jsonl(tmp_path / "b" / "x.jsonl", ["two"])  # the same file name elsewhere
    folder, identity = RunFolder(str(tmp_path / "r")), {"kind": "scan", "scoring_hash": "h1"}
    with folder.claim(identity, {}, list_inputs([str(first), str(failed)])) as (run, files):
        assert run["inputs"] == {str(first): "x.jsonl", str(failed): "y.jsonl"}
        folder.finish_shard(shard_name(str(first), 0), None, {})  # y.jsonl failed: nothing of it kept
    with folder.claim(identity, {}, list_inputs([str(first)])) as (run, files):  # so it may be left out
        assert run["inputs"] == {str(first): "x.jsonl"}
    with pytest.raises(InputError, match=r"holds a run over 1 input file\(s\) .*adds 1 input file\(s\) .*pass --add"):
        with folder.claim(identity, {}, list_inputs([str(first), str(second)]), add=False):
            pass
    with pytest.raises(InputError, match="adds 1 input file.*: use a new --out"):  # a command without --add
        with folder.claim(identity, {}, list_inputs([str(second)])):
            pass
    with folder.claim(identity, {}, list_inputs([str(second)]), add=True) as (run, files):
        # the earlier file stays in the run, under its source; the new one may not take that name
        assert [(f.uri, f.source) for f in files] == [(str(first), "x.jsonl"), (str(second), str(second))]
    assert RunFolder(str(tmp_path / "r")).run["inputs"] == {str(first): "x.jsonl", str(second): str(second)}
    with pytest.raises(InputError, match="does not name 1 input file"):
        with folder.claim(identity, {}, list_inputs([str(second)]), add=False):
            pass
    with pytest.raises(InputError, match="holds another run \\(scoring_hash h1 there, h2 here\\)"):
        with folder.claim({"kind": "scan", "scoring_hash": "h2"}, {}, list_inputs([str(first)])):
            pass


def test_a_run_that_finished_nothing_gives_way_to_a_corrected_command(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", ["one"])
    folder = RunFolder(str(tmp_path / "r"))
    with folder.claim({"kind": "scan", "scoring_hash": "wrong-model"}, {}, list_inputs([str(data)])) as (run, _):
        folder.store.write_json("plan/p.json", {})
        folder.write_quarantine("d-00000", pl.DataFrame({"row": [1]}).to_arrow())
    with folder.claim({"kind": "scan", "scoring_hash": "right-model"}, {}, list_inputs([str(data)])) as (again, _):
        assert again["run_id"] != run["run_id"] and again["scoring_hash"] == "right-model"
    assert folder.store.names("plan") == [] and folder.store.names("quarantine") == []


def _scan(data, model, out, *extra, env=None, wait=True):
    argv = [sys.executable, "-m", "scanner.cli", "scan", *map(str, data), "--model", model, "--out", str(out),
            "--shard-size", "4", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    if not wait:
        return proc
    out_, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _refused(result, expected):
    code, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err


@pytest.mark.timeout(600)
def test_two_processes_into_one_folder_never_mix(tmp_path, tiny_lm):
    """The issue's reproduction with real processes: a scan holds the folder (paused, by a gate,
    right after its claim: no timer raced), a second with other settings or the same ones is
    refused, the first is killed, its rerun takes the claim over and finishes; then the folder
    refuses other settings and takes another file only with --add."""
    texts = english_passages()[:12]
    w, x = _jsonl(tmp_path / "w.jsonl", texts[:8]), _jsonl(tmp_path / "x.jsonl", texts[8:])
    run_dir, gate, model = tmp_path / "run", tmp_path / "gate", tiny_lm["model"]
    first = _scan([w], model, run_dir, "--neighbors", "2", env={"SCANNER_PAUSE": f"claimed:{gate}"}, wait=False)
    deadline = time.monotonic() + 120
    while not os.path.exists(f"{gate}.reached"):  # the state we assert on: the folder claimed
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    assert json.loads((run_dir / "run.json").read_text())["config"]["neighbors"] == 2  # identity first
    _refused(_scan([w], model, run_dir, "--neighbors", "1"), "is in use by another run (scan, pid")
    _refused(_scan([w], model, run_dir, "--neighbors", "2"), "is in use by another run (scan, pid")
    os.killpg(first.pid, signal.SIGKILL)  # no cleanup: its lock stays, naming a dead process
    first.wait()
    assert (run_dir / LOCK).exists()

    code, err = _scan([w], model, run_dir, "--neighbors", "2")
    assert code == 0, err[-3000:]
    _refused(_scan([w], model, run_dir, "--neighbors", "1"), "holds another run (scoring_hash")
    _refused(_scan([w, x], model, run_dir, "--neighbors", "2"), "pass --add to add them to that run")
    code, err = _scan([x], model, run_dir, "--neighbors", "2", "--add")
    assert code == 0, err[-3000:]

    run = json.loads((run_dir / "run.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert sorted(run["inputs"]) == sorted(manifest["inputs"]) == sorted([str(w), str(x)])
    assert manifest["counts"]["scored"] == 12 and manifest["counts"]["shards_skipped"] == 2
    features = RunFolder(str(run_dir)).features(columns=["sample_id", "nb_loss", "run_id"])
    assert features.height == 12 and features["run_id"].unique().to_list() == [run["run_id"]]
    assert set(features["nb_loss"].list.len().to_list()) == {2}
    assert not (run_dir / LOCK).exists()
