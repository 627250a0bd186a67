"""A run folder (a local path or a URI) and every path in it; nothing else builds them.

  lock.json                  the process working in the folder, with its heartbeat
                             (scanner.lock): a second process is refused while it lives
  run.json                   identity: run_id, kind (scan / sweep), the scoring config and its
                             hash, the detector's fingerprint for a sweep, and the input files
                             with their sources; written first, under the lock. A resume must
                             match it; new input files join only when asked for (--add)
  plan/<file key>.json       the shards of one input file, with its size and mtime: a file that
                             changed since is planned again and all its shards scored anew
  features/<shard>.parquet   one row per scored sample, written by the worker that scored it
  quarantine/<shard>.parquet rows of the shard that could not be used, with reasons
  quarantine/duplicates.parquet  rows whose id another shard already holds (scan runs)
  quarantine/eval_items.parquet  overlap runs: eval rows that could not be used, with reasons
  done/<shard>.json          the shard's completion record, written last: a shard with one is
                             finished and never scored again
  sampling.json              a sweep sampled to a target count: the document rate that target
                             gave when the run started, kept for resumes and --add
  manifest.json              the invocation's summary: config, counts, shards, nodes, speed
  metrics.json, report.md, report.html, *.png   a sweep's report

Runs are told apart by run_id, never by where the folder is mounted.
"""

from __future__ import annotations

import hashlib
import uuid
from contextlib import contextmanager
from dataclasses import replace

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from scanner.errors import InputError
from scanner.inputs import InputFile, list_inputs
from scanner.lock import FolderLock
from scanner.shards import Shard, shard_prefix
from scanner.storage import Store

DUPLICATES = "duplicates"  # quarantine/duplicates.parquet: a name no shard can have (shards end in -NNNNN)
EVAL_ITEMS = "eval_items"  # quarantine/eval_items.parquet: overlap's eval rows that could not be used


def differences(saved: dict, identity: dict) -> str:
    """What a folder's saved identity says against this command's, in words ("" when they agree).
    A key the folder predates (its run.json lacks it) is not a difference."""
    differ = {k: (saved[k], v) for k, v in identity.items() if k in saved and saved[k] != v}
    return ", ".join(f"{k} {a} there, {b} here" for k, (a, b) in differ.items())


def refuse_another(uri: str, said: str) -> None:
    """The one line of every command whose folder holds a run of other settings or inputs."""
    raise InputError(f"{uri} holds another run ({said}); use a new --out or the same options")


def check_identity(store: Store, identity: dict) -> None:
    """A command's results folder (not a run folder) is bound to one identity, its settings and
    inputs, saved in run.json by save_identity once they are known to be valid: a resume must
    match it. Run under the folder's lock (scanner.lock)."""
    if store.exists("run.json"):
        said = differences(store.read_json("run.json"), identity)
        if said:
            refuse_another(store.uri, said)


def save_identity(store: Store, identity: dict, **record) -> None:
    store.write_json("run.json", identity | record)


def _files(uris: list[str]) -> str:
    more = f" and {len(uris) - 1} more" if len(uris) > 1 else ""
    return f"{len(uris)} input file(s) ({uris[0]}{more})"


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

    @contextmanager
    def claim(self, identity: dict, config: dict, files: list[InputFile], add: bool | None = None):
        """Holds the folder for one process and yields (the run record, every input file of the
        run). The record is saved before any work, so a second process sees it at once.

        An existing run must have the same identity and the same input files; with `add`, files it
        lacks join it (and it keeps the earlier ones, with their sources); None: the command offers
        no --add. A file left out that finished no shard (it failed) leaves the run. A run that
        finished no shard yet (a model that could not load) gives way to a corrected command."""
        with FolderLock(self.store, identity["kind"]):
            run, files = self._identify(identity, config, files, add)
            self.save_run(run)
            yield run, files

    def _identify(self, identity: dict, config: dict, files: list[InputFile], add: bool | None
                  ) -> tuple[dict, list[InputFile]]:
        fresh = {"run_id": uuid.uuid4().hex[:12], **identity, "config": config,
                 "inputs": {f.uri: f.source for f in files}}
        if not self.store.exists("run.json"):
            return fresh, files
        run, finished = self.run, self.done()
        said = differences({k: run.get(k) for k in identity}, identity)
        if said:
            if not finished:
                self._clear()
                return fresh, files
            refuse_another(self.uri, said)
        recorded: dict[str, str] = run.setdefault("inputs", {f.uri: f.source for f in files})  # (a run.json from before inputs were recorded)
        new = [f for f in files if f.uri not in recorded]
        for uri in set(recorded) - {f.uri for f in files}:  # a file left out that gave nothing (it failed) is dropped
            if not any(n.startswith(shard_prefix(uri)) for n in finished):
                del recorded[uri]
        missing = sorted(set(recorded) - {f.uri for f in files})
        if new and not add:
            how = "pass --add to add them to that run, or use a new --out" if add is False else "use a new --out"
            raise InputError(f"{self.uri} holds a run over {_files(list(recorded))}; this command adds "
                             f"{_files([f.uri for f in new])}: {how}")
        if missing and not add:
            raise InputError(f"{self.uri} holds a run over {_files(list(recorded))}; this command does not name "
                             f"{_files(missing)}: name the same inputs, or use a new --out")
        earlier = [replace(f, source=recorded[f.uri]) for f in list_inputs(missing)] if missing else []
        files = earlier + [replace(f, source=recorded.get(f.uri, f.source)) for f in files]
        sources = set(recorded.values())
        for i, f in enumerate(files):
            if f.uri not in recorded and f.source in sources:  # a new file named like an earlier one
                files[i] = replace(f, source=f.uri)
        run["inputs"] = {f.uri: f.source for f in files}
        return run, files

    def _clear(self) -> None:
        """What a run that finished nothing left: plans (a corrected command may cut other shards),
        the quarantine of shards it read, its manifest."""
        for folder in ("plan", "quarantine", "features"):
            for name in self.store.names(folder):
                self.store.delete(f"{folder}/{name}")
        self.store.delete("manifest.json")
        self.store.delete("sampling.json")

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

    def sampling_rate(self) -> float | None:
        """The document rate a --sample target gave when the run started (None: not yet)."""
        return self.store.read_json("sampling.json")["rate"] if self.store.exists("sampling.json") else None

    def save_sampling_rate(self, rate: float) -> None:
        self.store.write_json("sampling.json", {"rate": rate})

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

    def read_shard(self, shard: Shard, columns):
        """A shard's validated rows (scanner.corpus), its quarantined rows written here first with
        their reasons; InputError when the shard cannot be read at all."""
        from scanner.corpus import read_shard

        corpus = read_shard(shard, columns)
        if corpus.quarantine.height:
            self.write_quarantine(shard.name, corpus.quarantine.to_arrow())
        return corpus

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
            if self.store.exists("manifest.json"):
                c = self.manifest["counts"]
                raise InputError(f"{self.uri}: no usable row: each of the {c['read']} rows read was quarantined "
                                 f"({c['quarantined_by_reason']})")
            raise InputError(f"{self.uri}: no scored samples in it; run `scanner scan` into it first")
        if self.store.exists("run.json"):  # the run's own score modules: their columns are scores too
            from scanner.scoring import registry

            registry.load((self.config or {}).get("score_modules") or [])
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
        self.store.write_files(files)


def open_shard(shard: dict, columns, folder_uri: str) -> tuple[Shard, RunFolder, object, str | None]:
    """A corpus task's start: (the shard, its run folder, its validated rows, None), its
    quarantined rows written; (..., None, the error) when the shard cannot be read at all."""
    s, folder = Shard(**shard), RunFolder(folder_uri)
    try:
        return s, folder, folder.read_shard(s, columns), None
    except InputError as e:
        return s, folder, None, str(e)
