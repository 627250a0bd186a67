"""One corpus shard against the eval index: the Ray task of `scanner overlap`.

Kept apart from scanner.overlap.run so a worker imports only what matching needs (the run's
report pulls in matplotlib and scipy: ~1.5 s of every fresh worker's start)."""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa

from scanner.corpus import Columns
from scanner.overlap import kernel
from scanner.overlap.ngrams import EvalIndex
from scanner.runfolder import open_shard


def match_shard(shard: dict, columns: Columns, index: EvalIndex, folder_uri: str) -> dict:
    """One corpus shard: read and validate it, match it, write its matches and then its record."""
    import ray

    t0 = time.perf_counter()
    s, folder, corpus, error = open_shard(shard, columns, folder_uri)
    if error:
        return {"shard": s.name, "error": error}
    docs = corpus.samples
    t_read = time.perf_counter()
    found = index.match(docs["text"].to_arrow())
    t_match = time.perf_counter()
    matches = (found.join(docs.select(pl.int_range(pl.len()).alias("doc"), doc_id="sample_id", source="source"),
                          on="doc")
               .join(pl.DataFrame({"item_id": index.item_ids}).with_row_index("item").cast({"item": pl.Int64}),
                     on="item")
               .select("item_id", "doc_id", "source", "positions", "longest_span"))
    c = corpus.counts
    per_source = docs.group_by("source").len().rows()
    matched_per_source = matches.group_by("source").agg(pl.col("doc_id").n_unique()).rows()
    record = {"shard": s.name, "counts": {k: c[k] for k in ("read", "quarantined", "quarantined_by_reason")}
              | {"matched_docs": matches["doc_id"].n_unique(), "pairs": matches.height},
              "bytes": int(docs["text"].str.len_bytes().sum() or 0), "per_source": dict(per_source),
              "matched_per_source": dict(matched_per_source), "node": ray.get_runtime_context().get_node_id(),
              "seconds": round(time.perf_counter() - t0, 3),
              "read_seconds": round(t_read - t0, 3), "match_seconds": round(t_match - t_read, 3)}
    folder.finish_shard(s.name, matches.to_arrow(), record)
    return record


def warm_up() -> None:
    """Loads this module and the compiled loops (about 2 s in a fresh worker) by matching a
    word against itself (with the ASCII part of the Unicode tables: the index brings them all)."""
    EvalIndex.build(["w"], ["warm"], 1, kernel.unicode_tables(128)).match(pa.array(["warm"], pa.large_string()))
