"""`scanner overlap`: which eval items occur verbatim in a training corpus, and where.

  1. The eval items are read here (they are small) and indexed (scanner.overlap.ngrams); the
     index goes to the object store once and every worker maps it from there.
  2. The corpus is listed and cut into shards as a scan's inputs are (the engine's planning, the
     same readers and validation); one Ray task per shard (the engine's map_tasks) reads it,
     matches it against the index and writes the shard's (item, document) matches, then its
     completion record. A rerun skips every shard with a record; a changed eval set or n is
     refused in that folder.
  3. Per eval item, from the matches alone (never the corpus): how much of it occurs, its longest
     verbatim span, in how many documents, which ones and from which sources.

  <out>/features/<shard>.parquet   the shard's matches: item, doc_id, source, positions, longest_span
  <out>/quarantine/<shard>.parquet corpus rows that could not be read, with reasons
  <out>/done/<shard>.json          completion record: rows read, quarantined, matched, bytes, seconds
  <out>/items.parquet              per item: sample_id, source, ngrams, matched, coverage,
                                   longest_span, n_docs, doc_ids (up to 5), sources
  <out>/metrics.json, report.md, report.html
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import polars as pl

from scanner.corpus import Columns, read_corpus
from scanner.engine import make_room, map_tasks, plan, refuse_file_errors, start_planning
from scanner.errors import InputError
from scanner.inputs import list_inputs
from scanner.overlap.match import match_shard, warm_up
from scanner.overlap.ngrams import DEFAULT_N, EvalIndex, ngram_counts
from scanner.provenance import package_versions
from scanner.report import fmt, render_report, shares_png
from scanner.runfolder import RunFolder
from scanner.shards import Shard

SHARD_ROWS = 20_000  # corpus documents per shard: a few tens of MB of text, seconds of work
TASK_CPUS = 1.0
DOC_IDS_SHOWN = 5
THRESHOLDS = (0.0, 0.1, 0.5, 0.8, 1.0)  # items with coverage above each ("> 0": any overlap; "= 1": whole)


def eval_fingerprint(items: pl.DataFrame, n: int) -> str:
    h = hashlib.sha256(f"n={n}".encode())
    for sid, text in items.select("sample_id", "text").iter_rows():
        h.update(f"\0{sid}\0{text}".encode())
    return h.hexdigest()[:16]


def run_overlap(eval_paths: list[str], corpus_paths: list[str], out: str, n: int = DEFAULT_N,
                eval_columns: Columns = Columns(label=None), corpus_columns: Columns = Columns(label=None),
                parallel: int | None = None, shard_rows: int = SHARD_ROWS, add: bool | None = None,
                progress: Callable[[str], None] = print) -> dict:
    """add: corpus files the run in `out` lacks join it (RunFolder.claim)."""
    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}")
    if parallel is not None and parallel < 1:
        raise InputError(f"--actors must be at least 1, not {parallel}")
    if shard_rows < 1:
        raise InputError(f"--shard-size must be at least 1, not {shard_rows}")
    evals = read_corpus(eval_paths, eval_columns, progress=progress)
    folder = RunFolder(out)
    with folder.claim({"kind": "overlap", "scoring_hash": eval_fingerprint(evals.samples, n)},
                      {"n": n, "eval": eval_paths, "corpus": corpus_paths, "shard_rows": shard_rows},
                      list_inputs(corpus_paths), add) as (run, files):
        return _overlap_claimed(folder, run, files, evals, n, corpus_columns, parallel, shard_rows, eval_paths,
                                progress)


def _overlap_claimed(folder: RunFolder, run: dict, files: list, evals, n: int, corpus_columns: Columns,
                     parallel: int | None, shard_rows: int, eval_paths: list[str], progress: Callable[[str], None]
                     ) -> dict:
    import ray

    t0 = time.perf_counter()
    items = evals.samples
    if not ray.is_initialized():
        ray.init()
    limit = parallel or max(1, int(ray.cluster_resources().get("CPU", 1) // TASK_CPUS))
    planning = start_planning(files, folder, shard_rows, TASK_CPUS)
    # a first run has everything to match: the workers start, plan the corpus and load the compiled
    # loops while this process indexes. A rerun indexes only if some shard is left (a nightly's
    # rerun of a finished corpus needs neither).
    first_run = not folder.done()
    if first_run:
        make_room(limit * TASK_CPUS)
    warming = [ray.remote(num_cpus=TASK_CPUS)(warm_up).remote() for _ in range(limit)] if first_run else []
    index = _index(items, n, progress) if first_run else None
    shards, file_errors, _ = plan(files, folder, shard_rows, progress, started=planning)
    refuse_file_errors(file_errors)
    finished = folder.done()
    pending = [s for s in shards if s.name not in finished]
    progress(f"{len(files)} corpus file(s) in {len(shards)} shard(s): {len(shards) - len(pending)} done before, "
             f"{len(pending)} to match")
    if pending and index is None:
        index = _index(items, n, progress)
    errors = _match_all(pending, folder, index, corpus_columns, limit, progress)
    ray.get(warming)
    table = item_table(folder, items, n)
    folder.store.write_parquet("items.parquet", table.to_arrow())
    folder.write_eval_quarantine(evals.quarantine.to_arrow())  # nothing the eval side read goes unrecorded
    metrics = summarize(folder, table, shards, errors, n, eval_paths, [f.uri for f in files], time.perf_counter() - t0)
    metrics["counts"] |= {"eval_rows_read": evals.counts["read"], "eval_rows_quarantined": evals.counts["quarantined"],
                          "eval_quarantined_by_reason": evals.counts["quarantined_by_reason"]}
    metrics["run_id"] = run["run_id"]
    folder.write_files(render_report("Exact n-gram overlap: which eval items occur in the corpus?",
                                     overlap_blocks(metrics), metrics))
    return metrics


def _index(items: pl.DataFrame, n: int, progress) -> EvalIndex:
    index = EvalIndex.build(items["sample_id"].to_list(), items["text"].to_list(), n)
    progress(f"{items.height} eval items: {int(index.ngrams_per_item.sum())} {n}-grams "
             f"({len(index.vocabulary.words)} distinct words) indexed")
    return index


def _match_all(pending: list[Shard], folder: RunFolder, index: EvalIndex, columns: Columns, limit: int,
               progress) -> dict[str, str]:
    """Runs the pending shards, at most `limit` at once, so the driver holds small records only
    whatever the corpus size."""
    import ray

    if not pending:
        return {}
    make_room(limit * TASK_CPUS)
    index_ref = ray.put(index)
    task = ray.remote(num_cpus=TASK_CPUS, max_retries=2)(match_shard)
    errors, done, start = {}, Counter(), time.perf_counter()

    def record(s: Shard, r: dict) -> None:
        done.update(shards=1)
        if r.get("error"):
            errors[s.name] = r["error"]
            progress(f"shard {s.name} failed: {r['error']}")
            return
        done.update(bytes=r["bytes"], rows=r["counts"]["read"])
        rate = done["bytes"] / 1e6 / max(time.perf_counter() - start, 1e-9)
        progress(f"[{done['shards']}/{len(pending)}] {s.name}: {r['counts']['read']} rows, "
                 f"{r['counts']['matched_docs']} matching; {rate:.1f} MB/s over {done['rows']} rows")

    map_tasks(task, pending, lambda s: (s.to_dict(), columns, index_ref, folder.uri), limit, record)
    return errors


def item_table(folder: RunFolder, items: pl.DataFrame, n: int) -> pl.DataFrame:
    """Per eval item, from every shard's matches (not the corpus)."""
    base = items.select("sample_id", "source", ngrams=pl.Series(ngram_counts(items["text"].to_list(), n)))
    ds = folder.dataset("features")
    if ds is not None:  # streamed: the matches of a whole corpus need not fit in the driver at once
        matches = pl.scan_pyarrow_dataset(ds)
    else:
        matches = pl.LazyFrame(schema={"item_id": pl.String, "doc_id": pl.String, "source": pl.String,
                                       "positions": pl.List(pl.Int64), "longest_span": pl.Int64})
    per_item = matches.group_by("item_id").agg(
        matched=pl.col("positions").list.explode(keep_nulls=False, empty_as_null=False).n_unique(),
        longest_span=pl.col("longest_span").max(),
        n_docs=pl.col("doc_id").n_unique(),
        doc_ids=pl.col("doc_id").unique().sort().head(DOC_IDS_SHOWN),
        sources=pl.col("source").unique().sort()).collect(engine="streaming")
    out = base.join(per_item, left_on="sample_id", right_on="item_id", how="left", maintain_order="left")
    return out.with_columns(
        pl.col("matched", "longest_span", "n_docs").fill_null(0),
        pl.col("doc_ids", "sources").fill_null([]),
    ).with_columns(coverage=pl.when(pl.col("ngrams") > 0).then(pl.col("matched") / pl.col("ngrams")).otherwise(0.0)
                   ).select("sample_id", "source", "ngrams", "matched", "coverage", "longest_span", "n_docs",
                            "doc_ids", "sources")


def summarize(folder: RunFolder, table: pl.DataFrame, shards: list[Shard], errors: dict, n: int, eval_paths, corpus_paths,
              wall: float) -> dict:
    counts, reasons, per_source, matched_per_source, seconds = Counter(), Counter(), Counter(), Counter(), Counter()
    finished = folder.done()
    for s in shards:
        if s.name not in finished:
            continue
        r = folder.record(s.name)
        counts.update(read=r["counts"]["read"], quarantined=r["counts"]["quarantined"], bytes=r["bytes"],
                      matched_docs=r["counts"]["matched_docs"])
        reasons.update(r["counts"]["quarantined_by_reason"])
        per_source.update(r["per_source"])
        matched_per_source.update(r["matched_per_source"])
        seconds.update({k: r.get(k, 0.0) for k in ("seconds", "read_seconds", "match_seconds")})
    by_set = {}
    for source, group in table.group_by("source", maintain_order=True):
        cov = group["coverage"].to_numpy()
        by_set[source[0]] = {"items": group.height,
                             **{f"share_coverage_above_{t:g}": float(np.mean(cov > t)) for t in THRESHOLDS[:-1]},
                             "share_whole": float(np.mean(cov >= 1.0))}
    worst = table.filter(pl.col("matched") > 0).sort(["coverage", "longest_span"], descending=True).head(20)
    return {"task": "overlap", "n": n, "eval": eval_paths, "corpus": corpus_paths,
            "counts": {"items": table.height, "items_with_overlap": int((table["matched"] > 0).sum()),
                       "corpus_rows_read": counts["read"], "corpus_rows_quarantined": counts["quarantined"],
                       "quarantined_by_reason": dict(reasons), "corpus_documents_matching": counts["matched_docs"],
                       "corpus_bytes": counts["bytes"], "shards": len(shards),
                       "shards_done": len(finished & {s.name for s in shards}), "shards_failed": len(errors)},
            "errors": errors, "by_eval_set": by_set, "worst_items": worst.to_dicts(),
            "corpus_sources": {s: {"documents": per_source[s], "matching": matched_per_source[s]}
                               for s in sorted(per_source)},
            "throughput": {"task_seconds": round(seconds["seconds"], 2), "wall_seconds": round(wall, 2),
                           "mb_per_task_second": round(counts["bytes"] / 1e6 / seconds["seconds"], 2)
                           if seconds["seconds"] else None,
                           # where the tasks' time went: reading and validating the corpus, matching it
                           "task_read_seconds": round(seconds["read_seconds"], 2),
                           "task_match_seconds": round(seconds["match_seconds"], 2)},
            "versions": package_versions()}


def _coverage_shares(by_set: dict) -> dict[str, float]:
    """One eval set's share of items with coverage above each threshold, and whole."""
    return {f"coverage > {t:g}": by_set[f"share_coverage_above_{t:g}"] for t in THRESHOLDS[:-1]} | {
        "coverage whole": by_set["share_whole"]}


def overlap_blocks(m: dict) -> list:
    c = m["counts"]
    head = (f"**{c['items_with_overlap']} of {c['items']} eval items share at least one {m['n']}-gram with the corpus** "
            f"({c['corpus_rows_read']} documents read, {c['corpus_documents_matching']} of them matching; "
            f"{c['corpus_rows_quarantined']} rows quarantined). Eval rows: {c['eval_rows_read']} read, "
            f"{c['eval_rows_quarantined']} quarantined (quarantine/eval_items.parquet, with reasons).")
    shares = {s: _coverage_shares(v) for s, v in m["by_eval_set"].items()}
    blocks = [("p", head), ("img", "headline_shares.png", shares_png(
        shares, f"Share of eval items whose {m['n']}-grams occur in the corpus", "share of the eval set's items"))]
    if m["errors"]:
        blocks.append(("p", f"{len(m['errors'])} shard(s) failed (run again to retry): "
                            + "; ".join(f"{k}: {v}" for k, v in list(m["errors"].items())[:5])))
    blocks += [("h2", "Per eval set: share of items whose n-grams occur in the corpus"),
               ("table", ["eval set", "items", *next(iter(shares.values()), {})],
                [[s, v["items"], *[f"{x:.1%}" for x in shares[s].values()]] for s, v in m["by_eval_set"].items()]),
               ("h2", "The items with the most overlap"),
               ("table", ["item", "coverage", "longest span (words)", "documents", "e.g. documents"],
                [[w["sample_id"], fmt(w["coverage"]), w["longest_span"], w["n_docs"], ", ".join(w["doc_ids"])]
                 for w in m["worst_items"]] or [["(none)", "", "", "", ""]]),
               ("h2", "Per corpus source"),
               ("table", ["source", "documents", "matching an item"],
                [[s, v["documents"], v["matching"]] for s, v in m["corpus_sources"].items()]),
               ("p", f"Normalisation: lower case; words are runs of Unicode letters and digits; everything else "
                     f"separates words. Coverage = the item's {m['n']}-grams found anywhere in the corpus / its "
                     f"{m['n']}-grams (an item shorter than {m['n']} words counts as one, found only whole); longest "
                     "span = the longest stretch of the item found verbatim in one document.")]
    return blocks
