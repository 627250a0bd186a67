"""`scanner scan` end to end on local Ray, with a tiny GPT-2 trained here on half of the passages."""

import json
import threading

import numpy as np
import polars as pl
import pytest

from scanner.cli import main
from scanner.metrics import roc_auc
from tests.faults import kill_scoring_actor_once

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm):
    root = tmp_path_factory.mktemp("scan")
    data = root / "data.jsonl"
    rows = [{"text": t, "label": 1} for t in tiny_lm["members"]] + [{"text": t, "label": 0} for t in tiny_lm["non_members"]]
    rows.append({"text": "", "label": 0})  # quarantined, not lost
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "model": tiny_lm["model"], "data": str(data), "n": len(tiny_lm["passages"]),
            "train": tiny_lm["train"]}


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
    assert manifest["tokens_per_second"] > 0 and manifest["config"]["neighbors"] == 4
    feats = pl.read_parquet(out / "features" / "*.parquet")
    assert feats.height == n and feats["sample_id"].n_unique() == n
    assert feats["nb_loss"].list.len().unique().to_list() == [4]
    assert feats["nb_de_proj"].list.len().unique().to_list() == [4 * 8]
    assert feats["model"].unique().to_list() == [setup["model"]]
    y = feats["label"].to_numpy()
    auc = roc_auc(y, -feats["loss"].to_numpy())
    assert auc > 0.85, (auc, setup["train"])
    assert roc_auc(y, feats["min_k_pp_20"].to_numpy()) > 0.8

    # kill one shard's output (as a crash before it was written would), run again
    victim = out / "features" / "part-00001.parquet"
    before = pl.read_parquet(victim)
    untouched = {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet") if p != victim}
    victim.unlink()
    assert scan(setup, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["shards_skipped"] == manifest["counts"]["shards"] - 1
    assert manifest["counts"]["scored_this_invocation"] == 100
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet") if p != victim} == untouched
    after = pl.read_parquet(victim)
    assert after["sample_id"].to_list() == before["sample_id"].to_list()
    np.testing.assert_allclose(after["loss"].to_numpy(), before["loss"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(after["nb_dL"].to_list()), np.concatenate(before["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)
    assert after["nb_kinds"].to_list() == before["nb_kinds"].to_list()

    # nothing left to do: a finished run re-scores nothing
    assert scan(setup, out) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["scored_this_invocation"] == 0
    # another scoring config in the same folder is refused
    assert scan(setup, out, "--seed", "5") == 2


def test_config_file_sets_options_and_flags_override(ray_local, setup, tmp_path):
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(f"model: {setup['model']}\nneighbors: 2\nneighbor_kinds: [swap, case_invert]\nproj_dim: 0\nshard_size: 500\n")
    out = tmp_path / "run"
    assert main(["scan", setup["data"], "--config", str(cfg), "--out", str(out), "--neighbors", "3"]) == 0
    feats = pl.read_parquet(out / "features" / "*.parquet")
    assert feats["nb_kinds"][0].to_list() == ["swap", "case_invert", "swap"]
    assert feats["nb_de_proj"].is_null().all()  # projection off
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nneigbors: 3\n")
    assert main(["scan", setup["data"], "--config", str(bad), "--out", str(tmp_path / "r2")]) == 2


def test_a_killed_scoring_actor_is_restarted_and_the_output_is_unchanged(ray_local, setup, tmp_path):
    reference = setup["root"] / "run"
    if not (reference / "manifest.json").exists():
        assert scan(setup, reference) == 0
    out = tmp_path / "killed"
    killed: list = []
    killer = threading.Thread(target=kill_scoring_actor_once, args=(12.0, killed))
    killer.start()
    assert scan(setup, out) == 0  # Ray Data restarts the actor and retries its batch
    killer.join()
    assert killed, "no scoring actor was found to kill"
    got = pl.read_parquet(out / "features" / "*.parquet").sort("sample_id")
    want = pl.read_parquet(reference / "features" / "*.parquet").sort("sample_id")
    assert got["sample_id"].to_list() == want["sample_id"].to_list()  # every row once
    np.testing.assert_allclose(got["loss"].to_numpy(), want["loss"].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(got["nb_dL"].to_list()), np.concatenate(want["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)
