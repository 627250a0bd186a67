"""`scanner scan` end to end on local Ray, with a tiny GPT-2 trained here on half of the passages."""

import json
import re

import numpy as np
import polars as pl
import pytest

from scanner.cli import main
from scanner.metrics import roc_auc
from scanner.runfolder import RunFolder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm):
    root = tmp_path_factory.mktemp("scan")
    data = root / "data.jsonl"
    rows = [{"text": t, "label": 1} for t in tiny_lm["members"]] + [{"text": t, "label": 0} for t in tiny_lm["non_members"]]
    rows.append({"text": "", "label": 0})  # quarantined, not lost
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "model": tiny_lm["model"], "data": str(data), "n": len(tiny_lm["passages"]),
            "train": tiny_lm["train"], "texts": tiny_lm["passages"]}


def scan(setup, out, *extra):
    return main(["scan", setup["data"], "--model", setup["model"], "--out", str(out), "--neighbors", "4",
                 "--shard-size", "100", *extra])


def test_scan_separates_members_and_resumes_without_rescoring(ray_local, setup):
    out = setup["root"] / "run"
    assert scan(setup, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    n = setup["n"]
    assert manifest["counts"]["read"] == n + 1 == manifest["counts"]["scored"] + manifest["counts"]["quarantined"]
    assert manifest["counts"]["quarantined_by_reason"] == {"empty text": 1}
    assert manifest["counts"]["shards"] == -(-(n + 1) // 100)  # one input file, cut into shards of 100 rows
    assert manifest["tokens_per_second"] > 0 and manifest["config"]["neighbors"] == 4
    assert manifest["min_k_pp_available"] is True
    feats = RunFolder(out).features()
    assert feats.height == n and feats["sample_id"].n_unique() == n
    assert sorted(feats["row"].to_list()) == list(range(1, n + 1))  # the file's own line numbers, in every shard
    assert feats["nb_loss"].list.len().unique().to_list() == [4]
    assert feats["nb_de_proj"].list.len().unique().to_list() == [4 * 8]
    assert feats["model"].unique().to_list() == [setup["model"]]
    assert feats["text"].null_count() == 0  # texts kept for the blind baseline
    y = feats["label"].to_numpy()
    auc = roc_auc(y, -feats["loss"].to_numpy())
    assert auc > 0.85, (auc, setup["train"])
    assert roc_auc(y, feats["min_k_pp_20"].to_numpy()) > 0.8
    records = [json.loads(p.read_text()) for p in sorted((out / "done").glob("*.json"))]
    assert all(r["counts"]["read"] == r["counts"]["scored"] + r["counts"]["quarantined"] for r in records)

    # a shard whose completion record is missing (as a crash before it was written leaves it) is scored again
    victim = sorted((out / "done").glob("*.json"))[1]
    before = pl.read_parquet(out / "features" / f"{victim.stem}.parquet")
    untouched = {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet") if p.stem != victim.stem}
    victim.unlink()
    assert scan(setup, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["shards_skipped"] == manifest["counts"]["shards"] - 1
    assert manifest["counts"]["scored_this_invocation"] == 100
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet") if p.stem != victim.stem} == untouched
    after = pl.read_parquet(out / "features" / f"{victim.stem}.parquet")
    assert after["sample_id"].to_list() == before["sample_id"].to_list()
    np.testing.assert_allclose(after["loss"].to_numpy(), before["loss"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(after["nb_dL"].to_list()), np.concatenate(before["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)
    assert after["nb_kinds"].to_list() == before["nb_kinds"].to_list()

    # nothing left to do: a finished run re-scores nothing
    assert scan(setup, out) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["scored_this_invocation"] == 0
    # another scoring config in the same folder is refused
    assert scan(setup, out, "--neighbor-seed", "5") == 2


def test_config_file_sets_options_and_flags_override(ray_local, setup, tmp_path):
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(f"model: {setup['model']}\nneighbors: 2\nneighbor_kinds: [swap, case_invert]\nproj_dim: 0\nshard_size: 500\n")
    out = tmp_path / "run"
    assert main(["scan", setup["data"], "--config", str(cfg), "--out", str(out), "--neighbors", "3"]) == 0
    feats = RunFolder(out).features()
    assert feats["nb_kinds"][0].to_list() == ["swap", "case_invert", "swap"]
    assert feats["nb_de_proj"].is_null().all()  # projection off
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nneigbors: 3\n")
    assert main(["scan", setup["data"], "--config", str(bad), "--out", str(tmp_path / "r2")]) == 2


def test_duplicate_ids_across_shards_are_quarantined_and_a_bad_label_fails_only_its_shard(ray_local, setup, tmp_path):
    rows = [{"id": f"d{i % 150}", "text": t, "label": i % 2} for i, t in enumerate(setup["texts"][:200])]
    rows[170]["label"] = "yes"  # in the second shard of 100 rows
    data = tmp_path / "dups.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["scan", str(data), "--model", setup["model"], "--out", str(out), "--neighbors", "1",
                 "--shard-size", "100"]) == 2  # the bad label: exit 2, the error names file, row and value
    m = json.loads((out / "manifest.json").read_text())
    assert [e["state"] for e in m["shards"]] == ["done", "failed"]
    assert "dups.jsonl row 171" in m["shards"][1]["error"] and "'yes'" in m["shards"][1]["error"]
    assert main(["scan", str(data), "--model", setup["model"], "--out", str(out), "--neighbors", "1",
                 "--shard-size", "100"]) == 2  # again: only the failed shard is tried again
    m = json.loads((out / "manifest.json").read_text())
    assert [e["state"] for e in m["shards"]] == ["skipped", "failed"] and m["counts"]["scored_this_invocation"] == 0
    rows[170]["label"] = 1
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["scan", str(data), "--model", setup["model"], "--out", str(out), "--neighbors", "1",
                 "--shard-size", "100"]) == 0  # the file changed: all its shards are scored anew
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["shards_skipped"] == 0 and m["counts"]["scored_this_invocation"] == 200
    # ids d0..d49 come back in rows 151..200 (the second shard): quarantined there, kept where first seen
    assert m["counts"]["read"] == 200 and m["counts"]["scored"] == 150 and m["counts"]["quarantined"] == 50
    assert m["counts"]["quarantined_by_reason"] == {"duplicate id": 50}
    feats = RunFolder(out).features()
    assert feats.height == 150 and feats["sample_id"].n_unique() == 150 and feats["row"].max() == 150
    q = RunFolder(out).quarantine()
    assert q.height == 50 and q["reason"][0].startswith("duplicate id: first seen at ") and q["row"].min() == 151


def test_a_scoring_actor_that_dies_is_restarted_and_the_output_is_unchanged(ray_local, setup, tmp_path):
    reference = setup["root"] / "run"
    if not (reference / "manifest.json").exists():
        assert scan(setup, reference) == 0
    ray_local.arm()  # the actor dies on its second shard
    assert scan(setup, tmp_path / "died") == 0  # Ray restarts it and retries its shards
    assert ray_local.happened()
    got, want = RunFolder(tmp_path / "died").features(), RunFolder(reference).features()
    assert got["sample_id"].to_list() == want["sample_id"].to_list()  # every row once
    np.testing.assert_allclose(got["loss"].to_numpy(), want["loss"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(got["nb_dL"].to_list()), np.concatenate(want["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)
    assert json.loads((tmp_path / "died" / "manifest.json").read_text())["counts"]["shards_failed"] == 0


def test_the_next_run_of_the_same_model_reuses_its_actors_and_another_model_frees_them(ray_local, setup, tmp_path,
                                                                                       capsys):
    """Scoring actors outlive a run: the next scan of the same model in this driver binds them to
    itself (no reload) and writes what fresh actors write; a scan of another model shuts them down
    first, so two models never hold the accelerators together; and so does other work that needs
    what they hold."""
    import ray

    from scanner import engine
    from tests.conftest import tiny_gpt2, wait_until_dead

    subset = setup["root"] / "subset.jsonl"
    subset.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(setup["texts"][:60])))

    def run(out, *extra):
        return main(["scan", str(subset), "--model", setup["model"], "--out", str(out), "--neighbors", "2",
                     *extra])

    engine.release_parked()
    assert run(tmp_path / "first") == 0
    capsys.readouterr()
    assert run(tmp_path / "reused", "--neighbor-seed", "1") == 0  # another run's settings, same model
    err = capsys.readouterr().err
    assert "already hold" in err and "starting" not in err
    engine.release_parked()
    assert run(tmp_path / "fresh", "--neighbor-seed", "1") == 0
    assert "starting 1 scoring actor" in capsys.readouterr().err
    got, want = RunFolder(tmp_path / "reused").features(), RunFolder(tmp_path / "fresh").features()
    assert got["sample_id"].to_list() == want["sample_id"].to_list()
    np.testing.assert_allclose(np.concatenate(got["nb_dL"].to_list()), np.concatenate(want["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)
    first = RunFolder(tmp_path / "first").features()
    # the run's own seed (neighbors, projection) and run id, not those of the run the actors were made for
    assert got["nb_de_proj"].to_list() == want["nb_de_proj"].to_list() != first["nb_de_proj"].to_list()
    assert got["run_id"].unique().to_list() != first["run_id"].unique().to_list()

    (held,) = engine._parked.values()
    other = tmp_path / "other-model"
    tiny_gpt2(other)
    assert main(["scan", str(subset), "--model", str(other), "--out", str(tmp_path / "other"),
                 "--neighbors", "1"]) == 0
    wait_until_dead(held.actors[0])
    (now,) = engine._parked.values()
    assert now.cfg.model == str(other)
    # other work the driver submits next: kept when the cluster has room besides it, shut down when not
    # (on two CPUs a parked actor held one and `train` waited forever for two)
    engine.make_room(1)
    assert engine._parked and ray.get(now.actors[0].ready.remote()) is not None
    engine.make_room(ray.cluster_resources()["CPU"])
    assert not engine._parked
    wait_until_dead(now.actors[0])


@pytest.mark.timeout(300)
def test_a_long_shard_shows_progress_while_it_is_scored(tmp_path, tiny_lm):
    """A 378-row shard used to print nothing for minutes. The actor is held inside its shard (a
    gate, not a timer) until the driver has printed a progress line about it."""
    import os
    import subprocess
    import sys

    data, gate, config = tmp_path / "d.jsonl", tmp_path / "gate", tmp_path / "c.yaml"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_lm["passages"][:8]))
    config.write_text("samples_per_call: 2\nprogress_seconds: 0.5\nneighbors: 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "scanner.cli", "scan", str(data), "--model", tiny_lm["model"],
                             "--config", str(config), "--out", str(tmp_path / "run")], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "SCANNER_PAUSE": f"mid_shard:{gate}"})
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "scoring 1 shard(s)" in line:
            break
    gate.touch()
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, "".join(seen) + rest
    assert re.search(r"\[0/1\] scoring 1 shard\(s\): 2 of 8 rows; [\d,]+ tokens/s$", seen[-1].strip()), seen
    assert "[1/1]" in rest and "8 scored" in rest
    # the padding the forward passes carried is counted: every real position is a scored token
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["positions"]["real"] == m["tokens_scored_this_invocation"] and 0 <= m["positions"]["padded_share"] < 1
