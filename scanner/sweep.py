"""`scanner sweep`: which documents of a corpus did the model see, and how much of each source?

Each input file is one shard, read where Ray places its read task (local disk, shared mount or
any URI pyarrow or fsspec can open), then perturbed and scored by the actor pool; the driver
applies the trained detector to each finished shard and writes it. Output folder (a local path
or URI; on a multi-node cluster it must be storage every node can reach, as read tasks write
their quarantine there):

  sweep.json                 detector fingerprint and scoring config (a resubmission must match)
  read/<shard>.json          what the read task found: row counts, or the error
  quarantine/<shard>.parquet rows of the shard that cannot be scored, with reasons
  docs/<shard>.parquet       per document: all features, member_prob, flagged (none when every
                             row of the shard was quarantined)
  done/<shard>.json          completion marker, written after docs/: counts per source, nodes
  manifest.json              every shard's state: done, skipped (done before) or failed
  metrics.json, report.md, report.html   contaminated fraction per source, corrected for the
                             detector's TPR and FPR (scanner.contamination)

<shard> is the input file's name plus a hash of its full URI, so it never depends on the other
inputs: a shard with a done/ marker (written only after its outputs) is skipped by any later run.
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict

import polars as pl
import pyarrow as pa

from scanner.config import ScanConfig
from scanner.contamination import contaminated_fraction
from scanner.corpus import Columns, expand_paths, is_corpus_file, read_corpus
from scanner.detector.trained import TrainedDetector
from scanner.errors import InputError
from scanner.pipeline import collect_shards, configure_ray_data, scoring_stages
from scanner.provenance import package_versions
from scanner.report import fmt, fmt_fraction, render_report
from scanner.storage import Store, list_files, local_copy

SAMPLES = pa.schema([("sample_id", pa.string()), ("text", pa.string()), ("label", pa.int8()), ("source", pa.string()),
                     ("shard", pa.string()), ("shard_kept", pa.int64())])


def shard_name(uri: str) -> str:
    return f"{posixpath.basename(uri.rstrip('/'))}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"


def list_shards(inputs: list[str]) -> list[str]:
    """Input files (URIs or local paths, resolved), in a stable order."""
    found: list[str] = []
    for arg in inputs:
        found += list_files([arg], is_corpus_file) if "://" in arg else [str(p) for p in expand_paths([arg])]
    return list(dict.fromkeys(found))


def read_shards(batch: pa.Table, columns: dict, out: str) -> pa.Table:
    """Ray Data stage: read and validate the shards named in the batch; kept rows go on, each
    carrying its shard's kept count so the driver knows when a shard is complete."""
    import ray

    store, tables = Store(out), []
    for uri, name in zip(batch["uri"].to_pylist(), batch["shard"].to_pylist()):
        t0 = time.perf_counter()
        try:
            with local_copy(uri) as path:
                try:
                    corpus = read_corpus([str(path)], Columns(**columns))
                except InputError as e:  # name the input, not a temporary copy
                    raise InputError(str(e).replace(str(path), uri)) from None
        except (InputError, OSError) as e:
            store.write_json(f"read/{name}.json", {"uri": uri, "error": str(e)})
            continue
        store.write_parquet(f"quarantine/{name}.parquet", corpus.quarantine.with_columns(file=pl.lit(uri)).to_arrow())
        kept = corpus.samples.height
        store.write_json(f"read/{name}.json", {"uri": uri, "counts": corpus.counts | {"files": 1},
                                               "node": ray.get_runtime_context().get_node_id(),
                                               "seconds": round(time.perf_counter() - t0, 2)})
        samples = corpus.samples.select("sample_id", "text", "label", "source").with_columns(
            shard=pl.lit(name), shard_kept=pl.lit(kept, pl.Int64))
        tables.append(samples.to_arrow().cast(SAMPLES))
    return pa.concat_tables(tables) if tables else SAMPLES.empty_table()


def _per_source(docs: pl.DataFrame) -> dict[str, list[int]]:
    agg = docs.group_by("source").agg(pl.len().alias("n"), pl.col("flagged").sum().alias("flagged")).sort("source")
    return {s: [int(n), int(f)] for s, n, f in agg.iter_rows()}


def run_sweep(inputs: list[str], out: str, detector: TrainedDetector, cfg: ScanConfig,
              progress: Callable[[str], None] = print) -> dict:
    import ray

    t0 = time.perf_counter()
    detector.check_compatible(cfg)
    store = Store(out)
    identity = {"detector": detector.fingerprint, "kind": detector.kind, "scoring_hash": cfg.scoring_hash()}
    if store.exists("sweep.json"):
        previous = store.read_json("sweep.json")
        if {k: previous.get(k) for k in identity} != identity:
            raise InputError(f"{out} holds a sweep with another detector or scoring config ({previous} vs {identity}); "
                             "use a new --out or the same options")
        progress(f"resuming the sweep in {out}")
    else:
        store.write_json("sweep.json", identity | {"config": asdict(cfg)})
    uris = list_shards(inputs)
    names = {uri: shard_name(uri) for uri in uris}
    finished = {u for u in uris if store.exists(f"done/{names[u]}.json")}  # written after the shard's outputs
    pending = [u for u in uris if u not in finished]
    progress(f"{len(uris)} shards: {len(finished)} already done (skipped), {len(pending)} to score")
    state = {names[u]: "skipped" for u in finished}
    constants = {"model": cfg.model, "revision": cfg.revision or "local", "detector": detector.kind}

    def write(name: str, table: pa.Table, scored_on: list[str]) -> None:
        table = table.drop_columns(["shard_kept"])
        for col, value in constants.items():
            table = table.append_column(col, pa.array([value] * table.num_rows, pa.string()))
        prob, flagged = detector.score(pl.from_arrow(table))
        table = table.append_column("member_prob", pa.array(prob)).append_column("flagged", pa.array(flagged))
        store.write_parquet(f"docs/{name}.parquet", table)
        read = store.read_json(f"read/{name}.json")
        per_source = _per_source(pl.from_arrow(table.select(["source", "flagged"])))
        store.write_json(f"done/{name}.json", {"uri": read["uri"], "counts": read["counts"], "per_source": per_source,
                                               "read_on": read["node"], "scored_on": scored_on})
        state[name] = "done"
        progress(f"[{len(state)}/{len(uris)}] docs/{name}.parquet: {table.num_rows} documents, "
                 f"{int(flagged.sum())} flagged")

    if pending:
        if not ray.is_initialized():
            ray.init()
        for u in pending:  # a stale read marker must not stand in for this run's read
            store.delete(f"read/{names[u]}.json")
        configure_ray_data(cfg)
        items = [{"uri": u, "shard": names[u]} for u in pending]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        columns = {"text": cfg.text_col, "label": cfg.label_col, "id": cfg.id_col, "source": cfg.source_col}
        ds = ds.map_batches(read_shards, fn_kwargs={"columns": columns, "out": out}, batch_format="pyarrow",
                            batch_size=1)
        try:
            collect_shards(scoring_stages(ds, cfg), lambda _, part: part["shard_kept"][0].as_py(), write)
        except BaseException:  # a crash or Ctrl-C: still record what finished, then stop
            summarize(store, uris, names, state, {}, detector, cfg, time.perf_counter() - t0)
            raise
    errors = {}
    for u in pending:  # shards that sent no rows: unreadable, or every row quarantined
        name = names[u]
        if name in state:
            continue
        read = store.read_json(f"read/{name}.json") if store.exists(f"read/{name}.json") else {"error": "never read"}
        if "error" in read:
            errors[name] = read["error"]
            state[name] = "failed"
            progress(f"shard {u} failed: {read['error']}")
            continue
        store.write_json(f"done/{name}.json", {"uri": u, "counts": read["counts"], "per_source": {},
                                               "read_on": read["node"], "scored_on": []})
        state[name] = "done"
    return summarize(store, uris, names, state, errors, detector, cfg, time.perf_counter() - t0)


def summarize(store: Store, uris: list[str], names: dict, state: dict, errors: dict, detector: TrainedDetector,
              cfg: ScanConfig, wall: float) -> dict:
    """Manifest, and the per-source contaminated fractions over every finished shard, from the
    done markers alone (no document is read again, whatever the corpus size)."""
    shards, sources, counts, nodes = [], {}, {"read": 0, "scored": 0, "quarantined": 0}, set()
    for u in uris:
        name = names[u]
        entry = {"shard": name, "uri": u, "state": state.get(name, "failed")}
        if entry["state"] == "failed":
            entry["error"] = errors.get(name, "not finished")
        else:
            done = store.read_json(f"done/{name}.json")
            entry["counts"] = done["counts"]
            nodes.update(done["scored_on"])
            for key, ckey in (("read", "read"), ("scored", "kept"), ("quarantined", "quarantined")):
                counts[key] += done["counts"][ckey]
            for source, (n, f) in done["per_source"].items():
                sources[source] = [a + b for a, b in zip(sources.get(source, [0, 0]), (n, f))]
        shards.append(entry)
    op = detector.operating_point
    total = [sum(v[0] for v in sources.values()), sum(v[1] for v in sources.values())]
    estimates = {s: contaminated_fraction(f, n, op) for s, (n, f) in sources.items() if n}
    overall = contaminated_fraction(total[1], total[0], op) if total[0] else None
    by_state = {s: sum(1 for e in shards if e["state"] == s) for s in ("done", "skipped", "failed")}
    metrics = {
        "detector": {"kind": detector.kind, "fingerprint": detector.fingerprint, "threshold": detector.threshold,
                     "operating_point": asdict(op) | {"tpr": op.tpr, "fpr": op.fpr},
                     "trained_on_model": detector.scan_config["model"]},
        "model": cfg.model,
        "model_differs_from_training": cfg.model != detector.scan_config["model"],
        "overall": overall, "sources": estimates, "counts": counts, "shards": by_state,
        "scored_on_nodes": sorted(nodes), "wall_seconds": round(wall, 2), "versions": package_versions(),
    }
    store.write_json("manifest.json", {"shards": shards, "counts": counts, "config": asdict(cfg),
                                       "scored_on_nodes": sorted(nodes), "wall_seconds": round(wall, 2)})
    for fname, data in render_report("Contamination sweep", sweep_blocks(metrics, shards), metrics).items():
        store.write_bytes(fname, data)
    return metrics


def sweep_blocks(m: dict, shards: list[dict]) -> list:
    op = m["detector"]["operating_point"]
    blocks = [("p", f"Model {m['model']}; {m['detector']['kind']} detector, threshold {fmt(m['detector']['threshold'])}. "
                    f"On its held-out samples it flagged {op['tp']}/{op['n_pos']} members (TPR {fmt(op['tpr'])}) "
                    f"and {op['fp']}/{op['n_neg']} non-members (FPR {fmt(op['fpr'])}).")]
    if m["model_differs_from_training"]:
        blocks.append(("p", f"Caveat: the detector was trained on features of {m['detector']['trained_on_model']}; "
                            "its TPR and FPR are assumed to carry over to this model."))
    blocks += [("h2", "Contaminated fraction by source"),
               ("p", "Estimated fraction of documents the model saw: the flag rate corrected for the detector's "
                     "TPR and FPR (Rogan-Gladen), with a 95% interval that includes their uncertainty."),
               ("table", ["source", "documents", "flagged", "flag rate", "estimated fraction [95% CI]"],
                [[s, e["n"], e["flagged"], fmt(e["flag_rate"]), fmt_fraction(e)] for s, e in m["sources"].items()]
                + ([["all", m["overall"]["n"], m["overall"]["flagged"], fmt(m["overall"]["flag_rate"]),
                     fmt_fraction(m["overall"])]] if m["overall"] else []))]
    blocks += [("h2", "Shards"),
               ("p", f"{m['shards']['done']} scored in this run, {m['shards']['skipped']} done before, "
                     f"{m['shards']['failed']} failed. Rows: {m['counts']['read']} read, {m['counts']['scored']} "
                     f"scored, {m['counts']['quarantined']} quarantined (see quarantine/).")]
    failed = [[e["uri"], e["error"]] for e in shards if e["state"] == "failed"]
    if failed:
        blocks.append(("table", ["failed shard", "error"], failed))
    return blocks
