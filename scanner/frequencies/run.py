"""`scanner frequencies`: token counts of a reference corpus under a model's tokenizer, for
DC-PDD (scanner/scoring/scores/dc_pdd.py). The corpus is listed and cut into shards as a scan's
inputs are; one Ray task per shard counts it (scanner.frequencies.count) and writes its counts,
then its completion record; a rerun skips every shard with a record, and `--add` counts new
files only. The table is the sum of the shards' counts: the driver never holds the corpus.

  <out>/features/<shard>.parquet   the shard's counts: token_id, count (ids that occur)
  <out>/quarantine/<shard>.parquet rows that could not be read, with reasons
  <out>/done/<shard>.json          completion record: rows read, quarantined, tokens, seconds
  <out>/frequencies.parquet        token_id, count: every id of the vocabulary
  <out>/frequencies.json           tokenizer, its fingerprint, vocabulary size, documents, tokens,
                                   the table's fingerprint (a scan's identity holds it)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa

from scanner.corpus import Columns
from scanner.engine import make_room, map_tasks, plan, refuse_file_errors, start_planning
from scanner.errors import InputError
from scanner.frequencies.count import (INFO, TABLE, count_shard, load_tokenizer, table_fingerprint,
                                       tokenizer_fingerprint, vocabulary_size)
from scanner.inputs import list_inputs
from scanner.provenance import package_versions
from scanner.runfolder import RunFolder

SHARD_ROWS = 20_000
TASK_CPUS = 1.0


def run_frequencies(corpus_paths: list[str], model: str, out: str, columns: Columns = Columns(label=None),
                    revision: str | None = None, trust_remote_code: bool = False, parallel: int | None = None,
                    shard_rows: int = SHARD_ROWS, add: bool | None = None,
                    progress: Callable[[str], None] = print) -> dict:
    """The table's info (frequencies.json), which it also writes."""
    if parallel is not None and parallel < 1:
        raise InputError(f"--actors must be at least 1, not {parallel}")
    if shard_rows < 1:
        raise InputError(f"--shard-size must be at least 1, not {shard_rows}")
    from scanner.scoring.factory import check_model_path

    check_model_path(model)
    tokenizer_args = (model, revision, trust_remote_code)
    try:
        tokenizer = load_tokenizer(*tokenizer_args)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer of {model}: {str(e).splitlines()[0]}") from None
    fingerprint = tokenizer_fingerprint(tokenizer)
    folder = RunFolder(out)
    with folder.claim({"kind": "frequencies", "scoring_hash": fingerprint},
                      {"model": model, "revision": revision, "corpus": corpus_paths, "shard_rows": shard_rows},
                      list_inputs(corpus_paths), add) as (run, files):
        return _count_claimed(folder, files, columns, tokenizer_args, tokenizer, fingerprint, parallel, shard_rows,
                              corpus_paths, progress)


def _count_claimed(folder: RunFolder, files: list, columns: Columns, tokenizer_args: tuple, tokenizer, fingerprint: str,
                   parallel: int | None, shard_rows: int, corpus_paths: list[str], progress) -> dict:
    import ray

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    limit = parallel or max(1, int(ray.cluster_resources().get("CPU", 1) // TASK_CPUS))
    shards, file_errors, _ = plan(files, folder, shard_rows, progress,
                                  started=start_planning(files, folder, shard_rows, TASK_CPUS))
    refuse_file_errors(file_errors)
    finished = folder.done()
    pending = [s for s in shards if s.name not in finished]
    progress(f"{len(files)} corpus file(s) in {len(shards)} shard(s): {len(shards) - len(pending)} done before, "
             f"{len(pending)} to count")
    errors, done = {}, Counter()

    def record(s, r: dict) -> None:
        done.update(shards=1)
        if r.get("error"):
            errors[s.name] = r["error"]
            progress(f"shard {s.name} failed: {r['error']}")
            return
        done.update(rows=r["counts"]["read"], tokens=r["tokens"])
        rate = done["tokens"] / max(time.perf_counter() - t0, 1e-9)
        progress(f"[{done['shards']}/{len(pending)}] {s.name}: {r['counts']['read']} rows, {r['tokens']:,} tokens; "
                 f"{rate:,.0f} tokens/s")

    if pending:
        make_room(limit * TASK_CPUS)
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=2)(count_shard)
        map_tasks(task, pending, lambda s: (s.to_dict(), columns, tokenizer_args, folder.uri), limit, record)
    counts = np.zeros(vocabulary_size(tokenizer), dtype=np.int64)
    ds = folder.dataset("features")
    if ds is not None:  # summed streaming: the shards' tables need not fit in memory at once
        summed = (pl.scan_pyarrow_dataset(ds).group_by("token_id").agg(pl.col("count").sum())
                  .collect(engine="streaming"))
        counts[summed["token_id"].to_numpy()] = summed["count"].to_numpy()
    folder.store.write_parquet(TABLE, pa.table({"token_id": pa.array(np.arange(len(counts)), pa.int32()),
                                                "count": pa.array(counts, pa.int64())}))
    read, quarantined, finished = Counter(), Counter(), folder.done()
    for s in shards:
        if s.name in finished:
            r = folder.record(s.name)
            read.update(rows=r["counts"]["read"], quarantined=r["counts"]["quarantined"])
            quarantined.update(r["counts"]["quarantined_by_reason"])
    info = {"task": "frequencies", "tokenizer": tokenizer_args[0], "tokenizer_fingerprint": fingerprint,
            "vocabulary_size": int(len(counts)), "documents": read["rows"] - read["quarantined"],
            "rows_read": read["rows"], "rows_quarantined": read["quarantined"], "quarantined_by_reason": dict(quarantined),
            "tokens": int(counts.sum()), "table_fingerprint": table_fingerprint(counts), "corpus": corpus_paths,
            "shards": len(shards), "shards_failed": len(errors), "errors": errors,
            "wall_seconds": round(time.perf_counter() - t0, 2), "versions": package_versions()}
    if errors:  # an incomplete table is not one: no frequencies.json until every shard is counted
        folder.store.delete(INFO)
    else:
        folder.store.write_json(INFO, info)
    return info
