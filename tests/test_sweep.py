"""`scanner sweep` on local Ray: a detector trained on a real scan of the tiny GPT-2 flags the
documents it saw; each source's contaminated fraction is estimated; shards resume one by one."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from scanner.cli import main
from scanner.metrics import roc_auc
from scanner.runfolder import RunFolder
from scanner.shards import shard_name
from tests.conftest import train_tiny_detector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm, ray_local):
    root = tmp_path_factory.mktemp("sweep")
    detector = train_tiny_detector(root, tiny_lm, neighbors=4)
    m, n = tiny_lm["members"], tiny_lm["non_members"]
    corpus = root / "corpus"
    corpus.mkdir()

    def rows(texts, subset, label):
        return [{"text": t, "subset": subset, "label": label} for t in texts]

    shards = [
        write_jsonl(corpus / "part-1.jsonl", rows(m[:50], "seen", 1)),
        write_jsonl(corpus / "part-2.jsonl", rows(m[50:100], "seen", 1) + rows(n[:50], "unseen", 0)
                    + [{"text": "", "subset": "unseen", "label": 0}]),  # quarantined, not lost
        write_jsonl(corpus / "part-4.jsonl", [{"text": " ", "subset": "seen"}] * 3),  # every row quarantined
    ]
    pl.DataFrame(rows(n[50:100], "unseen", 0) + rows(m[100:120], "mixed", 1) + rows(n[100:120], "mixed", 0)
                 ).write_parquet(corpus / "part-3.parquet")
    shards.insert(2, str(corpus / "part-3.parquet"))
    (root / "broken.parquet").write_bytes(b"this is not parquet")
    return {"root": root, "detector": detector, "shards": shards, "broken": str(root / "broken.parquet"),
            "model": tiny_lm["model"]}


def sweep(setup, out, *extra, inputs=None):
    inputs = inputs if inputs is not None else [str(Path(setup["shards"][0]).parent)]
    return main(["sweep", *inputs, "--detector", setup["detector"], "--out", str(out), "--source-col", "subset",
                 "--label-col", "label", "--shard-size", "40", *extra])


def docs_of(out) -> pl.DataFrame:
    return RunFolder(out).features()


def states_by_file(manifest: dict) -> dict:
    """{file name: [state of each of its shards]}"""
    out: dict = {}
    for e in manifest["shards"]:
        out.setdefault(Path(e["uri"]).name, []).append(e["state"])
    return out


def test_sweep_flags_seen_documents_and_estimates_each_source(setup):
    out = setup["root"] / "out"
    assert sweep(setup, out, inputs=[str(Path(setup["shards"][0]).parent), setup["broken"]]) == 2  # a failed file
    manifest = json.loads((out / "manifest.json").read_text())
    # files of more than 40 rows are cut into shards of at most 40
    assert states_by_file(manifest) == {"part-1.jsonl": ["done"] * 2, "part-2.jsonl": ["done"] * 3,
                                        "part-3.parquet": ["done"] * 3, "part-4.jsonl": ["done"],
                                        "broken.parquet": ["failed"]}
    assert "broken.parquet" in next(e["error"] for e in manifest["shards"] if e["state"] == "failed")
    # nothing lost: every row read is scored or quarantined, with its reason
    assert {k: manifest["counts"][k] for k in ("read", "scored", "quarantined")} == \
        {"read": 50 + 101 + 90 + 3, "scored": 240, "quarantined": 4}
    quarantine = RunFolder(out).quarantine()
    assert quarantine.height == 4 and set(quarantine["reason"]) == {"empty text"}
    docs = docs_of(out)
    assert docs.height == 240 and docs["sample_id"].n_unique() == 240 and "text" not in docs.columns
    assert not (out / "features" / f"{shard_name(setup['shards'][3], 0)}.parquet").exists()  # zero documents kept
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_array_equal(docs["flagged"].to_numpy(), docs["member_prob"].to_numpy() > metrics["detector"]["threshold"])
    assert roc_auc(docs["label"].to_numpy(), docs["member_prob"].to_numpy()) > 0.9
    src = metrics["sources"]
    assert {s: src[s]["n"] for s in src} == {"seen": 100, "unseen": 100, "mixed": 40}
    assert src["seen"]["ci"][0] > 0.6 and src["unseen"]["ci"][0] < 0.1 and src["unseen"]["estimate"] < 0.2
    assert 0.2 < src["mixed"]["estimate"] < 0.8
    # the estimate corrects the flag rate for the detector's TPR and FPR; it is not the flag rate
    op = metrics["detector"]["operating_point"]
    assert src["seen"]["estimate"] == pytest.approx(min(1, (src["seen"]["flag_rate"] - op["fpr"]) / (op["tpr"] - op["fpr"])))
    assert src["seen"]["flagged"] == int(docs.filter(pl.col("source") == "seen")["flagged"].sum())
    assert (out / "report.html").exists() and "Contaminated fraction by source" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()  # the answer first: one sentence and the per-source forest plot
    assert md.index("The model saw an estimated") < md.index("headline_fractions.png") < md.index("| source |")
    assert (out / "headline_fractions.png").stat().st_size > 1000
    # each shard's record names the node whose worker wrote its features
    record = json.loads((out / "done" / f"{shard_name(setup['shards'][1], 1)}.json").read_text())
    assert record["scored_on"] in manifest["scored_on_nodes"] and record["counts"]["read"] == 40


def test_rerun_scores_only_unfinished_shards_and_matches(setup):
    out = setup["root"] / "out"
    if not (out / "manifest.json").exists():
        sweep(setup, out)
    before = docs_of(out)
    victim = shard_name(setup["shards"][1], 1)  # the middle shard of part-2.jsonl
    untouched = {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet") if p.stem != victim}
    (out / "done" / f"{victim}.json").unlink()  # as if the job died before the record was written
    assert sweep(setup, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert states_by_file(manifest) == {"part-1.jsonl": ["skipped"] * 2, "part-2.jsonl": ["skipped", "done", "skipped"],
                                        "part-3.parquet": ["skipped"] * 3, "part-4.jsonl": ["skipped"]}
    assert manifest["counts"]["scored_this_invocation"] == 40
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").glob("*.parquet") if p.stem != victim} == untouched
    after = docs_of(out)
    assert after["sample_id"].to_list() == before["sample_id"].to_list()
    np.testing.assert_allclose(after["member_prob"].to_numpy(), before["member_prob"].to_numpy(), rtol=1e-5)
    # another detector in the same output folder is refused
    other = "tabular" if after["detector"][0] == "fimmia" else "fimmia"
    assert sweep(setup, out, "--kind", other) == 2
    # features that do not match the detector's training are refused before any work
    cfg = setup["root"] / "neighbors.yaml"
    cfg.write_text("neighbors: 6\n")
    assert sweep(setup, setup["root"] / "other", "--config", str(cfg)) == 2
    assert not (setup["root"] / "other" / "run.json").exists()


def test_a_scoring_actor_that_dies_does_not_change_the_sweep(setup, ray_local, tmp_path):
    reference = setup["root"] / "out"
    if not (reference / "manifest.json").exists():
        sweep(setup, reference)
    ray_local.arm()  # the actor dies on its second shard
    assert sweep(setup, tmp_path / "died") == 0
    assert ray_local.happened()
    got, want = docs_of(tmp_path / "died"), docs_of(reference)
    assert got["sample_id"].to_list() == want["sample_id"].to_list()  # every row once
    for col in ("loss", "member_prob"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(got["nb_dL"].to_list()), np.concatenate(want["nb_dL"].to_list()),
                               rtol=1e-5, atol=1e-7)


def test_inputs_and_outputs_given_as_uris(setup, tmp_path):
    """file:// URIs go through pyarrow's filesystem layer for listing, reading and writing."""
    inputs = [f"file://{setup['shards'][0]}", f"file://{Path(setup['shards'][1]).parent}/part-4*"]
    assert sweep(setup, f"file://{tmp_path / 'uri_out'}", inputs=inputs) == 0
    manifest = json.loads((tmp_path / "uri_out" / "manifest.json").read_text())
    assert states_by_file(manifest) == {"part-1.jsonl": ["done"] * 2, "part-4.jsonl": ["done"]}
    assert {k: manifest["counts"][k] for k in ("read", "scored", "quarantined")} == \
        {"read": 53, "scored": 50, "quarantined": 3}


def test_a_detector_that_cannot_estimate_is_refused_before_any_work(setup, tmp_path, capsys):
    import shutil

    broken = tmp_path / "detector"
    shutil.copytree(setup["detector"], broken)
    for kind in ("fimmia", "tabular"):
        meta = json.loads((broken / f"{kind}.json").read_text())
        meta["info"]["operating_point"] |= {"tp": 1, "fp": meta["info"]["operating_point"]["n_neg"]}  # TPR <= FPR
        (broken / f"{kind}.json").write_text(json.dumps(meta))
    assert main(["sweep", setup["shards"][0], "--detector", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "does not separate members from non-members" in capsys.readouterr().err
    assert not (tmp_path / "o" / "run.json").exists()
