"""`scanner scan`: read -> perturb (CPU tasks) -> score (actor pool) -> Parquet feature shards.

Run folder:
  run.json                  the scoring config and its hash (a resume must match it)
  shards/input-NNNNN.parquet   validated samples, `shard_size` per shard, written once
  features/part-NNNNN.parquet  feature rows of one input shard, written atomically when complete
  quarantine.parquet        rows that could not be used, with reasons
  manifest.json             resolved config, versions, counts, wall time, tokens/s

Resume: a shard whose feature file exists is never scored again, so a crashed or killed run picks
up where it stopped; re-running a finished command does no scoring at all.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scanner.config import ScanConfig
from scanner.corpus import Columns, read_corpus
from scanner.errors import InputError
from scanner.features import FEATURE_SCHEMA, ScoreActor, perturb_batch
from scanner.provenance import package_versions


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a reader never sees half a shard, a crash leaves only a .tmp


def prepare_run(data: list[str], out: Path, cfg: ScanConfig, progress: Callable[[str], None]) -> dict:
    """Validate inputs once and cut them into shards; on a resume, check the config matches."""
    run_file = out / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous["scoring_hash"] != cfg.scoring_hash():
            raise InputError(f"{out} holds a run with another scoring config ({previous['scoring_hash']} != "
                             f"{cfg.scoring_hash()}); use a new --out or the same options")
        progress(f"resuming run {previous['run_id']} in {out}")
        return previous
    out.mkdir(parents=True, exist_ok=True)
    corpus = read_corpus(data, Columns(text=cfg.text_col, label=cfg.label_col, id=cfg.id_col, source=cfg.source_col),
                         progress=progress)
    if corpus.samples.height == 0:
        raise InputError(f"no usable rows in {' '.join(data)}: {corpus.counts['quarantined_by_reason']}")
    (out / "shards").mkdir(exist_ok=True)
    shards = []
    table = corpus.samples.select("sample_id", "text", "label", "source").to_arrow()
    for k, start in enumerate(range(0, table.num_rows, cfg.shard_size)):
        name = f"input-{k:05d}.parquet"
        part = table.slice(start, cfg.shard_size)
        part = part.append_column("shard", pa.array([name] * part.num_rows, pa.string()))
        _write_atomic(part, out / "shards" / name)
        shards.append({"name": name, "rows": part.num_rows})
    corpus.quarantine.write_parquet(out / "quarantine.parquet")
    run = {"run_id": uuid.uuid4().hex[:12], "scoring_hash": cfg.scoring_hash(), "config": asdict(cfg),
           "inputs": corpus.files, "corpus": corpus.counts, "shards": shards}
    run_file.write_text(json.dumps(run, indent=2))  # last: its presence means the shards are complete
    progress(f"{corpus.counts['read']} rows read: {corpus.counts['kept']} kept in {len(shards)} shards, "
             f"{corpus.counts['quarantined']} quarantined")
    return run


def feature_path(out: Path, shard_name: str) -> Path:
    return out / "features" / shard_name.replace("input-", "part-")


def scoring_stages(ds, cfg: ScanConfig):
    """Perturb (CPU tasks), then fill, score and embed in an actor pool that keeps the models
    loaded. Ray Data restarts a crashed actor and retries its batch."""
    import ray

    gpus = cfg.gpus_per_actor
    if gpus is None:
        has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        gpus = cfg.tensor_parallel_size if cfg.backend == "vllm" else (1 if has_gpu else 0)
    ds = ds.map_batches(perturb_batch, fn_kwargs={"neighbor_cfg": cfg.neighbor_config()},
                        batch_format="pyarrow", batch_size=cfg.samples_per_call)
    return ds.map_batches(ScoreActor, fn_constructor_kwargs={"cfg": asdict(cfg)}, batch_format="pyarrow",
                          batch_size=cfg.samples_per_call, num_gpus=gpus, num_cpus=cfg.cpus_per_actor,
                          compute=ray.data.ActorPoolStrategy(size=cfg.actors))


def configure_ray_data(cfg: ScanConfig) -> None:
    """Before any dataset is made (each copies the context): work starts once every scoring actor
    is up, so the first to load its model does not take all the early batches, and a pool that
    cannot be placed within actor_start_timeout seconds is an error, not a hang."""
    import ray

    ray.data.DataContext.get_current().wait_for_min_actors_s = cfg.actor_start_timeout


def collect_shards(ds, expected_rows: Callable[[str, pa.Table], int],
                   on_complete: Callable[[str, pa.Table, list[str]], None]) -> None:
    """Streams scored rows to the driver and hands over each input shard, sorted by sample_id,
    as soon as all its rows are in, with the nodes that scored it; then forgets it. A shard
    never arrives twice or in part."""
    buffers: dict[str, list[pa.Table]] = {}
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for name in set(batch["shard"].to_pylist()):
            part = batch.filter(pc.equal(batch["shard"], name))
            buffers.setdefault(name, []).append(part)
            if sum(t.num_rows for t in buffers[name]) == expected_rows(name, part):
                table = pa.concat_tables(buffers.pop(name)).sort_by("sample_id")
                nodes = sorted(set(table["scored_on"].to_pylist()))
                on_complete(name, table.drop_columns(["scored_on"]), nodes)
    if buffers:
        raise RuntimeError(f"incomplete shards after scoring: { {k: sum(t.num_rows for t in v) for k, v in buffers.items()} }")


def run_scan(data: list[str], out: Path, cfg: ScanConfig, progress: Callable[[str], None] = print) -> dict:
    import ray

    t0 = time.perf_counter()
    out = Path(out)
    run = prepare_run(data, out, cfg, progress)
    (out / "features").mkdir(exist_ok=True)
    pending = [s for s in run["shards"] if not feature_path(out, s["name"]).exists()]
    skipped = len(run["shards"]) - len(pending)
    if skipped:
        progress(f"{skipped} of {len(run['shards'])} shards already scored: skipped")
    totals = {"rows": 0, "tokens": 0}
    nodes: set[str] = set()
    if pending:
        if not ray.is_initialized():
            ray.init()
        expected = {s["name"]: s["rows"] for s in pending}
        constants = {"model": cfg.model, "revision": cfg.revision or "local", "run_id": run["run_id"]}

        def write(name: str, table: pa.Table, scored_on: list[str]) -> None:
            for col, value in constants.items():
                table = table.append_column(col, pa.array([value] * table.num_rows, pa.string()))
            _write_atomic(table, feature_path(out, name))
            totals["rows"] += table.num_rows
            totals["tokens"] += int(pc.sum(table["n_tokens"]).as_py() + pc.sum(table["nb_tokens"]).as_py())
            nodes.update(scored_on)
            progress(f"wrote {feature_path(out, name).name} ({table.num_rows} samples)")

        configure_ray_data(cfg)
        ds = ray.data.read_parquet([str(out / "shards" / s["name"]) for s in pending])
        collect_shards(scoring_stages(ds, cfg), lambda name, _: expected[name], write)
    wall = time.perf_counter() - t0
    manifest = {
        "run_id": run["run_id"],
        "config": run["config"],
        "scoring_hash": run["scoring_hash"],
        "inputs": run["inputs"],
        "counts": {"read": run["corpus"]["read"], "scored": sum(s["rows"] for s in run["shards"]),
                   "quarantined": run["corpus"]["quarantined"],
                   "quarantined_by_reason": run["corpus"]["quarantined_by_reason"],
                   "scored_this_invocation": totals["rows"], "shards": len(run["shards"]), "shards_skipped": skipped},
        "feature_schema": [f"{f.name}: {f.type}" for f in FEATURE_SCHEMA],
        "min_k_pp_available": run["config"].get("backend", "hf") == "hf",
        "scored_on_nodes": sorted(nodes),
        "wall_seconds": round(wall, 2),
        "tokens_scored_this_invocation": totals["tokens"],
        "tokens_per_second": round(totals["tokens"] / wall, 1) if totals["tokens"] else None,
        "versions": package_versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
