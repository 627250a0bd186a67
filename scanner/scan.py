"""`scanner scan`: every sample of the inputs and its neighbors scored under the model, one
feature row per sample, in a resumable run folder (layout: scanner.runfolder; how: scanner.engine)."""

from __future__ import annotations

from collections.abc import Callable

from scanner.config import ScanConfig
from scanner.engine import RunKind, run_shards
from scanner.errors import InputError


def run_scan(data: list[str], out, cfg: ScanConfig, progress: Callable[[str], None] = print,
             add: bool | None = None) -> dict:
    """The run's manifest (add: input files the run in `out` lacks join it). Shards that failed (an unreadable file part, a bad label) are listed in
    it with their errors; a run in which no row at all could be scored is an error."""
    manifest = run_shards(data, str(out), cfg, RunKind("scan"), progress, add)
    c = manifest["counts"]
    if c["scored"] == 0 and not c["shards_failed"]:
        raise InputError(f"no usable row in {' '.join(data)}: {c['quarantined_by_reason']}")
    return manifest
