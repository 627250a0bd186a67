"""Leakage baseline as a Ray job:

    ray job submit --working-dir . -- python jobs/baseline.py DATA... --out DIR [scanner baseline options]

The baseline runs as one Ray task that reserves --jobs CPUs (default 2) wherever Ray places it
(the head of cluster.yaml takes no work), so DATA must be readable there: shared storage. The task
sends the report files back and the driver writes them to --out (a folder on the node it runs on,
the head, or a URI).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import ray

from scanner.baseline.report import baseline_report
from scanner.cli import build_parser, columns_from_args
from scanner.corpus import Columns
from scanner.errors import InputError
from scanner.progress import Progress
from scanner.storage import Store, absolute

OPTIONS = ("folds", "seed", "n_boot", "jobs", "permute_labels", "cv_repeats")


def parse(argv: list[str]) -> argparse.Namespace:
    """Exactly `scanner baseline`'s options (the command's own grammar)."""
    args = build_parser().parse_args(["baseline", *argv])
    args.jobs = args.jobs or 2  # CPUs the task reserves and uses
    return args


@ray.remote(max_retries=1)
def baseline_task(data: list[str], columns: Columns, options: dict) -> dict:
    """Runs where Ray places it; returns {file name: bytes} of the report folder, or an error."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            baseline_report(data, tmp, columns, progress=Progress(), **options)
        except InputError as e:
            return {"error": str(e)}
        return {"files": {p.name: p.read_bytes() for p in Path(tmp).iterdir()}, "node": ray.get_runtime_context().get_node_id()}


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.folds < 2:
        print("scanner: error: --folds must be at least 2", file=sys.stderr)
        return 2
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    columns = columns_from_args(args)
    options = {k: getattr(args, k) for k in OPTIONS}
    result = ray.get(baseline_task.options(num_cpus=args.jobs).remote(args.data, columns, options))
    if "error" in result:
        print(f"scanner: error: {result['error']}", file=sys.stderr)
        return 2
    out = Store(absolute(args.out))
    out.write_files(result["files"])
    print(f"baseline ran on node {result['node'][:12]}; report: {out.uri_of('report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
