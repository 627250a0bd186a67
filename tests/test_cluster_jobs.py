"""jobs/sweep.py submitted with `ray job submit --working-dir .` to a real two-node Ray cluster
(`ray start --head` + `ray start --address`, in a network namespace so that all its traffic is on
127.0.0.1): both nodes score, the output is complete, and a sweep stopped midway and submitted
again skips its finished shards and ends with the same output as an uninterrupted one."""

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from scanner.train import train_detectors
from scanner.runfolder import RunFolder
from tests.fake_scan import write_fake_run
from tests.local_cluster import BIN, LocalCluster, _alive, is_loopback

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for ip netns (the cluster's loopback-only network)")]
SHARDS = 16
STOPPER = """
import glob, sys, time
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
while not glob.glob(sys.argv[2]):
    time.sleep(0.02)
client.stop_job(sys.argv[3])
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm):
    root = tmp_path_factory.mktemp("cluster")
    # the detector's accuracy does not matter here, only the mechanics: train it on synthetic
    # features with the same settings (4 neighbors, 8-dim projection) that the sweep computes
    write_fake_run(root / "fake_scan", n=400, k=4, proj=8)
    train_detectors(str(root / "fake_scan"), str(root / "detector"), seed=0)
    corpus = root / "corpus"
    corpus.mkdir()
    texts = tiny_lm["passages"][: SHARDS * 10]
    for i in range(SHARDS):
        (corpus / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[i::SHARDS]))
    # 3 of each node's 4 logical CPUs per actor: the two actors cannot share a node
    (root / "sweep.yaml").write_text(yaml.safe_dump({"cpus_per_actor": 3, "samples_per_call": 4}))
    with LocalCluster(root / "ray", workers=1, cpus_per_node=4, object_store_mb=300) as cluster:
        yield {"root": root, "cluster": cluster, "model": tiny_lm["model"]}
        started = cluster.pids()
    assert not [p for p in started if _alive(p)], "cluster processes survived stop()"
    assert cluster.ns not in subprocess.run(["/usr/sbin/ip", "netns", "list"], capture_output=True, text=True).stdout


def submit(setup, out: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    root, cluster = setup["root"], setup["cluster"]
    args = [f"{BIN}/ray", "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".", *extra,
            "--", "python", "jobs/sweep.py", str(root / "corpus"), "--detector", str(root / "detector"),
            "--model", setup["model"], "--out", str(out), "--actors", "2", "--config", str(root / "sweep.yaml")]
    proc = subprocess.Popen(cluster.cmd(args), cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if wait:
        proc.wait(timeout=400)
    return proc


def docs(out: Path) -> pl.DataFrame:
    return RunFolder(out).features()


def test_sweep_job_uses_both_nodes_over_loopback_only(setup):
    cluster, out = setup["cluster"], setup["root"] / "full"
    proc = submit(setup, out, wait=False)
    connections = set()
    while proc.poll() is None:  # sample while the driver, the actors and the workers are up
        connections.update(cluster.connections())
        time.sleep(0.5)
    log = proc.stdout.read()
    assert proc.returncode == 0, log[-4000:]
    outside = sorted(c for c in connections if not (is_loopback(c[0]) and is_loopback(c[1])))
    assert len(connections) > 10 and not outside, f"connections not on 127.0.0.1: {outside}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["state"] for e in manifest["shards"]] == ["done"] * SHARDS
    assert set(manifest["scored_on_nodes"]) == set(cluster.node_ids()), log[-6000:]  # both nodes scored
    # each shard's record names the node whose worker wrote its features: both nodes wrote some
    writers = {json.loads(p.read_text())["scored_on"] for p in (out / "done").glob("*.json")}
    assert writers == set(cluster.node_ids())
    got = docs(out)
    assert got.height == SHARDS * 10 == manifest["counts"]["read"] and got["sample_id"].n_unique() == got.height
    assert got["member_prob"].is_not_null().all()


def test_a_stopped_sweep_resubmitted_skips_finished_shards_and_matches(setup):
    cluster, out = setup["cluster"], setup["root"] / "stopped"
    reference = setup["root"] / "full"
    if not (reference / "manifest.json").exists():
        submit(setup, reference)
    # the stopper is up (ray imported) before the sweep starts, and stops it within milliseconds of
    # its first finished shard: the `ray job stop` command alone takes longer than the whole sweep
    stopper = subprocess.Popen(cluster.cmd([f"{BIN}/python", "-c", STOPPER, cluster.dashboard_url,
                                            str(out / "done" / "*.json"), "sweep-stopped"]),
                               env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(5)
    proc = submit(setup, out, "--submission-id", "sweep-stopped", "--no-wait")
    assert proc.wait(timeout=120) == 0, proc.stdout.read()[-3000:]
    assert stopper.wait(timeout=300) == 0, stopper.stdout.read()[-3000:]
    status = cluster.run([f"{BIN}/ray", "job", "status", "--address", cluster.dashboard_url, "sweep-stopped"]).stdout
    assert "stopped" in status.lower(), status
    finished = {p.stem for p in (out / "done").glob("*.json")}
    assert 0 < len(finished) < SHARDS, "stop the sweep between its first and its last shard"

    proc = submit(setup, out)
    assert proc.returncode == 0, proc.stdout.read()[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    states = {e["shard"]: e["state"] for e in manifest["shards"]}
    assert {s for s, state in states.items() if state == "skipped"} == finished
    assert {s for s, state in states.items() if state == "done"} == set(states) - finished
    got, want = docs(out), docs(reference)
    assert got["sample_id"].to_list() == want["sample_id"].to_list()
    for col in ("loss", "member_prob"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(got["nb_dL"].to_list()), np.concatenate(want["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)
