"""A run folder (a local path or a URI) and every path in it; nothing else builds them.

  run.json                   identity: run_id, kind (scan / sweep), the scoring config and its
                             hash, the detector's fingerprint for a sweep; a resume must match
  plan/<file key>.json       the shards of one input file, with its size and mtime: a file that
                             changed since is planned again and all its shards scored anew
  features/<shard>.parquet   one row per scored sample, written by the worker that scored it
  quarantine/<shard>.parquet rows of the shard that could not be used, with reasons
  quarantine/duplicates.parquet  rows whose id another shard already holds (scan runs)
  quarantine/eval_items.parquet  overlap runs: eval rows that could not be used, with reasons
  done/<shard>.json          the shard's completion record, written last: a shard with one is
                             finished and never scored again
  manifest.json              the invocation's summary: config, counts, shards, nodes, speed
  metrics.json, report.md, report.html, *.png   a sweep's report

Runs are told apart by run_id, never by where the folder is mounted.
"""

from __future__ import annotations

import hashlib
import uuid

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from scanner.errors import InputError
from scanner.inputs import InputFile
from scanner.shards import Shard
from scanner.storage import Store

DUPLICATES = "duplicates"  # quarantine/duplicates.parquet: a name no shard can have (shards end in -NNNNN)
EVAL_ITEMS = "eval_items"  # quarantine/eval_items.parquet: overlap's eval rows that could not be used


class RunFolder:
    def __init__(self, uri, create: bool = True):
        self.uri = str(uri)
        self.store = Store(self.uri, create=create)

    @classmethod
    def existing(cls, uri) -> "RunFolder":
        folder = cls(uri, create=False)
        if not folder.store.exists("run.json"):
            raise InputError(f"{uri}: not a run folder (no run.json); run `scanner scan` into it first")
        return folder

    # ------------------------------------------------------------ identity

    def identify(self, identity: dict, config: dict) -> tuple[dict, bool]:
        """(the run record, whether it is new). An existing run must have the same identity; a
        new one is saved by save_run once it has started."""
        if self.store.exists("run.json"):
            run = self.run
            differ = {k: (run.get(k), v) for k, v in identity.items() if run.get(k) != v}
            if differ:
                said = ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items())
                raise InputError(f"{self.uri} holds another run ({said}); use a new --out or the same options")
            return run, False
        return {"run_id": uuid.uuid4().hex[:12], **identity, "config": config}, True

    def save_run(self, run: dict) -> None:
        self.store.write_json("run.json", run)

    @property
    def run(self) -> dict:
        return self.store.read_json("run.json")

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def config(self) -> dict:
        return self.run["config"]

    # ------------------------------------------------------------ plans

    @staticmethod
    def _plan_path(uri: str) -> str:
        return f"plan/{hashlib.sha256(uri.encode()).hexdigest()[:16]}.json"

    def cached_plan(self, f: InputFile) -> tuple[list[Shard] | None, list[str]]:
        """(the file's shards as planned before, or None; the shards of an outdated plan: the file
        changed since, so they must be scored again)."""
        rel = self._plan_path(f.uri)
        if not self.store.exists(rel):
            return None, []
        saved = self.store.read_json(rel)
        if (saved["size"], saved["mtime_ns"]) != (f.size, f.mtime_ns):
            return None, [s["name"] for s in saved["shards"]]
        return [Shard(**s) for s in saved["shards"]], []

    def forget(self, names: list[str]) -> None:
        """Everything a shard left: its record first, so that it is never seen as finished."""
        for name in names:
            for rel in (f"done/{name}.json", f"features/{name}.parquet", f"quarantine/{name}.parquet"):
                self.store.delete(rel)

    def save_plan(self, f: InputFile, shards: list[Shard]) -> None:
        self.store.write_json(self._plan_path(f.uri), {"uri": f.uri, "size": f.size, "mtime_ns": f.mtime_ns,
                                                       "shards": [s.to_dict() for s in shards]})

    # ------------------------------------------------------------ shards (written by workers)

    def done(self) -> set[str]:
        """Names of the finished shards, from one listing."""
        return {n.removesuffix(".json") for n in self.store.names("done", ".json")}

    def write_quarantine(self, name: str, table: pa.Table) -> None:
        self.store.write_parquet(f"quarantine/{name}.parquet", table)

    def finish_shard(self, name: str, features: pa.Table | None, record: dict) -> None:
        """The features, then the completion record: a record means the shard is whole."""
        if features is not None and features.num_rows:
            self.store.write_parquet(f"features/{name}.parquet", features)
        self.store.write_json(f"done/{name}.json", record)

    def record(self, name: str) -> dict:
        return self.store.read_json(f"done/{name}.json")

    # ------------------------------------------------------------ results

    def dataset(self, folder: str):
        """The Parquet files under `folder` (features, quarantine) as one pyarrow dataset, or None."""
        names = self.store.names(folder, ".parquet")
        return pads.dataset([self.store.path(f"{folder}/{n}") for n in names], filesystem=self.store.fs,
                            format="parquet") if names else None

    def features(self, columns: list[str] | None = None, with_duplicates: bool = False) -> pl.DataFrame:
        """Every scored row of the run, in sample_id order, without the rows quarantined as
        duplicates of another shard's (unless asked for: finding them needs them all)."""
        ds = self.dataset("features")
        if ds is None:
            raise InputError(f"{self.uri}: no scored samples in it; run `scanner scan` into it first")
        needed = None if columns is None else list(dict.fromkeys([*columns, "sample_id", "file", "row"]))
        df = pl.from_arrow(ds.to_table(columns=needed))
        if not with_duplicates and self.store.exists(f"quarantine/{DUPLICATES}.parquet"):
            dup = pl.from_arrow(self.store.read_parquet(f"quarantine/{DUPLICATES}.parquet")).select("file", "row")
            df = df.join(dup, on=["file", "row"], how="anti")
        df = df.sort("sample_id")
        return df if columns is None else df.select(columns)

    def quarantine(self) -> pl.DataFrame:
        ds = self.dataset("quarantine")
        return pl.from_arrow(ds.to_table()) if ds is not None else pl.DataFrame()

    def write_eval_quarantine(self, table: pa.Table) -> None:
        self.store.write_parquet(f"quarantine/{EVAL_ITEMS}.parquet", table)

    def write_duplicates(self, table: pa.Table) -> None:
        self.store.write_parquet(f"quarantine/{DUPLICATES}.parquet", table)

    def write_manifest(self, manifest: dict) -> None:
        self.store.write_json("manifest.json", manifest)

    @property
    def manifest(self) -> dict:
        return self.store.read_json("manifest.json")

    def write_files(self, files: dict[str, bytes]) -> None:
        """Report files (metrics.json, report.md/html, images) at the top of the folder."""
        for name, data in files.items():
            self.store.write_bytes(name, data)
