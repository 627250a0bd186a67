"""A sampled `scanner sweep` against the full sweep of the same corpus, in one process and one run.

A tiny GPT-2 is trained on half of the pydoc passages; a detector is trained on a scan of all of
them (1 neighbor); the corpus is FILES Parquet files of ROWS rows in three sources, each with the
detector's held-out member passages planted at its own rate (web 30%, books 10%, code 0%), stored
as plain text (no dictionary, no compression: repeated passages would otherwise shrink to nothing).

  (a) the full sweep (skipped with --skip-full: at corpus scale it is what sampling avoids)
  (b) --sample-rate RATE
  (c) --shard-rate FILE_RATE --sample-rate RATE (files left out are never opened)

The scoring actors are started before the clock (a sweep of one file at rate 0.01), as a
cluster's are before a job arrives. Printed per run: wall seconds, documents scored, share of input bytes read, each source's
estimate [95% CI] against the planted share, and the ratio of each wall time to (a)'s.

    python bench/sweep_sampling.py                                    # 20 files x 1,000 rows
    python bench/sweep_sampling.py --files 500 --rows 10000 --skip-full --rate 0.01   # ~2 GB
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

PLANTED = {"web": 0.3, "books": 0.1, "code": 0.0}


def detector_and_texts(work: Path) -> tuple[str, dict[int, list[str]]]:
    """A detector for a tiny GPT-2 trained here, and its held-out member / non-member passages."""
    import polars as pl

    from scanner.cli import main
    from scanner.runfolder import RunFolder
    from scanner.toy import english_passages, member_split, train_tiny_gpt2
    from scanner.train import train_detectors

    passages = english_passages()
    members, non_members = member_split(passages, seed=0)
    train_tiny_gpt2(members, passages, work / "model", target_loss=4.2, log=lambda m: None)
    (work / "labelled.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                                 for y, texts in ((1, members), (0, non_members)) for t in texts))
    assert main(["scan", str(work / "labelled.jsonl"), "--model", str(work / "model"), "--out", str(work / "scan"),
                 "--neighbors", "1"]) == 0
    train_detectors(str(work / "scan"), str(work / "detector"), seed=0)
    held_out = json.loads((work / "detector" / "split.json").read_text())["test_ids"]
    scan = RunFolder(work / "scan").features(columns=["sample_id", "text", "label"])
    scan = scan.filter(pl.col("sample_id").is_in(held_out))
    return str(work / "detector"), {y: scan.filter(pl.col("label") == y)["text"].to_list() for y in (0, 1)}


def write_corpus(folder: Path, texts: dict[int, list[str]], files: int, rows: int) -> dict[str, float]:
    """The corpus; returns each source's planted share and the corpus's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    counts = {s: [0, 0] for s in [*PLANTED, "all"]}
    pools = {y: np.array(texts[y], dtype=object) for y in (0, 1)}
    for i in range(files):
        source = list(PLANTED)[i % 3]
        member = rng.random(rows) < PLANTED[source]
        column = np.where(member, pools[1][rng.integers(len(pools[1]), size=rows)],
                          pools[0][rng.integers(len(pools[0]), size=rows)])
        table = pa.table({"id": [f"{i}-{r}" for r in range(rows)], "text": column.tolist(), "subset": [source] * rows})
        pq.write_table(table, folder / f"part-{i:05d}.parquet", compression="none", use_dictionary=False,
                       row_group_size=1000)
        for s in (source, "all"):
            counts[s][0] += int(member.sum())
            counts[s][1] += rows
    return {s: m / n for s, (m, n) in counts.items() if n}


def sweep(corpus: Path, detector: str, out: Path, shard_size: int, *extra: str) -> dict:
    from scanner.cli import main

    t0 = time.perf_counter()
    assert main(["sweep", str(corpus), "--detector", detector, "--out", str(out), "--source-col", "subset",
                 "--shard-size", str(shard_size), *extra]) == 0
    wall = time.perf_counter() - t0
    metrics, manifest = (json.loads((out / name).read_text()) for name in ("metrics.json", "manifest.json"))
    read = manifest["bytes"]["read_by_shards"] + manifest["bytes"]["planning_this_invocation"]
    return {"wall_s": round(wall, 1), "scored": manifest["counts"]["scored"], "bytes_read_share": read / manifest["bytes"]["inputs"],
            "estimates": {s: [e["estimate"], *e["ci"]] for s, e in [*metrics["sources"].items(), ("all", metrics["overall"])]},
            "uncertainty": metrics["overall"].get("uncertainty")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1000, help="rows per file")
    ap.add_argument("--rate", type=float, default=0.05, help="document sample rate of (b) and (c)")
    ap.add_argument("--file-rate", type=float, default=0.1, help="first-stage file rate of (c)")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--work", help="folder to keep everything in (default: a new temporary one)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    import ray

    work = Path(args.work or tempfile.mkdtemp(prefix="sweep_sampling_"))
    ray.init(include_dashboard=False, log_to_driver=False)
    detector, texts = detector_and_texts(work)
    t0 = time.perf_counter()
    planted = write_corpus(work / "corpus", texts, args.files, args.rows)
    size = sum(f.stat().st_size for f in (work / "corpus").glob("*.parquet"))
    print(f"corpus: {args.files} files x {args.rows:,} rows = {args.files * args.rows:,} documents, {size / 1e9:.2f} GB "
          f"(written in {time.perf_counter() - t0:.0f} s); planted {json.dumps({s: round(v, 4) for s, v in planted.items()})}")
    # a first sweep of one file starts the scoring actors: every timed run below reuses them
    (work / "warm").mkdir()
    (work / "warm" / "part-00000.parquet").symlink_to(work / "corpus" / "part-00000.parquet")
    sweep(work / "warm", detector, work / "warm-run", args.shard_size, "--sample-rate", "0.01")
    runs = {}
    if not args.skip_full:
        runs["full"] = sweep(work / "corpus", detector, work / "full", args.shard_size)
    runs[f"rate {args.rate:g}"] = sweep(work / "corpus", detector, work / "sampled", args.shard_size,
                                        "--sample-rate", str(args.rate))
    runs[f"files {args.file_rate:g} x rate {args.rate:g}"] = sweep(
        work / "corpus", detector, work / "two-stage", args.shard_size, "--shard-rate", str(args.file_rate),
        "--sample-rate", str(args.rate))
    full = runs.get("full")
    for name, r in runs.items():
        ratio = f", {r['wall_s'] / full['wall_s']:.3f} of the full sweep's time" if full else ""
        print(f"{name}: {r['wall_s']} s, {r['scored']:,} scored, {r['bytes_read_share']:.1%} of the bytes read{ratio}")
        for s, (est, lo, hi) in r["estimates"].items():
            mark = "ok" if lo <= planted[s] <= hi else "MISSED"
            print(f"    {s:<6} {est:.3f} [{lo:.3f}, {hi:.3f}]  planted {planted[s]:.3f}  {mark}")
        if r["uncertainty"]:
            u = r["uncertainty"]
            print(f"    corpus interval: {u['documents_share']:.0%} documents scored, {u['detector_share']:.0%} "
                  f"detector; more documents to halve it: {u['more_documents_to_halve']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "bytes": size, "planted": planted, "runs": runs},
                                              indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
