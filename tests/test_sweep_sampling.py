"""Sampled sweeps on local Ray: 50 Parquet files of 1,000 rows in three sources, each with known
members (passages the tiny GPT-2 was trained on) planted at its own rate. A 5% document sample
scores ~5% of the rows, its intervals hold each planted rate, a rerun scores nothing twice and
keeps the sample, added files keep every earlier sampled document; a 10% file stage never opens
the other files and reads at most 15% of the corpus's bytes."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from scanner.cli import main
from scanner.runfolder import RunFolder
from scanner.sampling import file_picked, in_sample
from tests.conftest import train_tiny_detector

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PLANTED = {"web": 0.3, "books": 0.1, "code": 0.0}  # the share of each source's documents the model saw
FILES, ROWS = 50, 1000


def write_corpus(folder: Path, texts: dict[int, list[str]], names: range, seed: int, rows: int = ROWS) -> None:
    """Parquet files whose rows are a planted member with the source's rate, else a non-member;
    row groups of 1,000 rows, stored as plain text (the few passages repeated would otherwise
    compress to a few kB a file, where a footer is most of the file)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in names:
        source = list(PLANTED)[i % 3]
        member = rng.random(rows) < PLANTED[source]
        column = [texts[int(m)][rng.integers(len(texts[int(m)]))] for m in member]
        pl.DataFrame({"id": [f"{i}-{r}" for r in range(rows)], "text": column, "subset": source, "member": member}
                     ).write_parquet(folder / f"part-{i:03d}.parquet", compression="uncompressed", row_group_size=1000,
                                     use_pyarrow=True, pyarrow_options={"use_dictionary": False})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_lm, ray_local):
    root = tmp_path_factory.mktemp("sampling")
    detector = train_tiny_detector(root, tiny_lm, neighbors=1)
    # plant only the detector's held-out passages: those its TPR and FPR were measured on
    held_out = set(json.loads((Path(detector) / "split.json").read_text())["test_ids"])
    scan = RunFolder(root / "scan").features(columns=["sample_id", "text", "label"])
    scan = scan.filter(pl.col("sample_id").is_in(held_out))
    texts = {y: scan.filter(pl.col("label") == y)["text"].to_list() for y in (0, 1)}
    write_corpus(root / "corpus", texts, range(FILES), seed=0)
    return {"root": root, "detector": detector, "texts": texts, "model": tiny_lm["model"]}


def sweep(corpus, out, *extra, data: str = "corpus") -> int:
    return main(["sweep", str(corpus["root"] / data), "--detector", corpus["detector"], "--out", str(out),
                 "--source-col", "subset", "--id-col", "id", *extra])


def truth(folder: Path, files=None) -> dict[str, float]:
    """Each source's share of members, and the corpus's, over the files given (default all)."""
    df = pl.read_parquet(sorted(files or folder.glob("*.parquet")))
    return {s: float(g["member"].mean()) for (s,), g in df.group_by("subset")} | {"all": float(df["member"].mean())}


def covers(estimate: dict, value: float) -> bool:
    return estimate["ci"][0] <= value <= estimate["ci"][1]


def test_a_sampled_sweep_scores_its_sample_holds_the_planted_rates_resumes_and_grows(corpus):
    out, data = corpus["root"] / "sampled", corpus["root"] / "corpus"
    assert sweep(corpus, out, "--sample-rate", "0.05") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    c, n = manifest["counts"], FILES * ROWS
    assert c["read"] == n and c["read"] == c["scored"] + c["quarantined"] + c["unsampled"]  # nothing lost
    assert abs(c["scored"] - 0.05 * n) < 4 * np.sqrt(n * 0.05 * 0.95)  # ~5% scored
    ids = pl.read_parquet(sorted(data.glob("*.parquet")))["id"].to_list()
    sampled = set(RunFolder(out).features(columns=["sample_id"])["sample_id"])
    assert sampled == {i for i, keep in zip(ids, in_sample(ids, 0, 0.05)) if keep}  # exactly the keyed-hash sample
    metrics = json.loads((out / "metrics.json").read_text())
    planted = truth(data)
    for source, e in metrics["sources"].items():
        assert covers(e, planted[source]), (source, e["ci"], planted[source])
    assert covers(metrics["overall"], planted["all"]) and metrics["overall"]["documents"] == n
    assert metrics["sources"]["code"]["ci"][0] < 0.03  # never-seen text: the interval reaches down to ~0
    md = (out / "report.md").read_text()
    assert "Sampled sweep (seed 0)" in md and "The corpus interval is dominated by the" in md

    # a rerun finds every shard done: it scores nothing, and the sample is the same
    assert sweep(corpus, out, "--sample-rate", "0.05") == 0
    again = json.loads((out / "manifest.json").read_text())
    assert again["counts"]["scored_this_invocation"] == 0 and again["counts"]["scored"] == c["scored"]
    assert json.loads((out / "metrics.json").read_text())["overall"]["ci"] == metrics["overall"]["ci"]
    # another rate in the same folder would mix two samples: refused before any work
    assert sweep(corpus, out, "--sample-rate", "0.1") == 2

    # the corpus grows: every earlier sampled document stays in the sample, the new files add theirs
    write_corpus(data, corpus["texts"], range(FILES, FILES + 5), seed=1)
    assert sweep(corpus, out, "--sample-rate", "0.05", "--add") == 0
    grown = json.loads((out / "manifest.json").read_text())
    features = RunFolder(out).features(columns=["sample_id"])
    assert features["sample_id"].n_unique() == features.height  # no document scored twice
    assert sampled < set(features["sample_id"]) and grown["counts"]["read"] == (FILES + 5) * ROWS
    assert 0 < grown["counts"]["scored_this_invocation"] < 0.05 * 5 * ROWS + 4 * np.sqrt(5 * ROWS * 0.05)


def test_a_file_stage_never_opens_the_files_it_leaves_out(corpus):
    """50 files of 4,000 rows (1.6 MB each): 10% of the files read, and about 480 of their
    documents scored (--sample: the rate is 480 over the rows of the files read)."""
    out, data = corpus["root"] / "two-stage", corpus["root"] / "large"
    write_corpus(data, corpus["texts"], range(FILES), seed=2, rows=4 * ROWS)
    files = sorted(data.glob("*.parquet"))
    assert sweep(corpus, out, "--shard-rate", "0.1", "--sample", "480", data="large") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    picked = [f for f in files if file_picked(f.name, 0, 0.1)]
    assert sorted(manifest["sampling"]["files_read"]) == sorted(str(f) for f in picked)
    assert manifest["sampling"]["rate"] == pytest.approx(480 / (len(picked) * 4 * ROWS))
    assert abs(manifest["counts"]["scored"] - 480) < 4 * np.sqrt(480)
    read = manifest["bytes"]["read_by_shards"] + manifest["bytes"]["planning_this_invocation"]
    total = sum(f.stat().st_size for f in files)
    assert manifest["bytes"]["inputs"] == total
    assert read <= 0.15 * total, f"read {read} of {total} bytes"
    assert read <= 1.05 * sum(f.stat().st_size for f in picked)  # only the picked files' bytes (and a footer more)
    metrics = json.loads((out / "metrics.json").read_text())
    planted = truth(data, files)
    assert covers(metrics["overall"], planted["all"])
    for source, e in metrics["sources"].items():  # each source over the whole corpus, from the files read
        assert covers(e, planted[source]), (source, e["ci"], planted[source])
    lo, hi = metrics["overall"]["documents_ci"]
    assert lo <= len(files) * 4 * ROWS <= hi  # the corpus's documents, estimated from bytes
