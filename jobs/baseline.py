"""Leakage baseline as a Ray job:

    ray job submit --working-dir . -- python jobs/baseline.py DATA... --out DIR [scanner baseline options]

The baseline runs as one Ray task that reserves --jobs CPUs (default 2) wherever Ray places it
(the head of cluster.yaml takes no work), so DATA must be readable there: shared storage. The task
sends the report files back and the driver writes them to --out on the node it runs on (the head).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import ray

from scanner.cli import EXIT_BAD_INPUT, Progress, build_parser, columns_from_args, run_baseline_command
from scanner.errors import InputError


@ray.remote(max_retries=1)
def baseline_task(args_dict: dict) -> dict:
    """Runs where Ray places it; returns {file name: bytes} of the report folder, or an error."""
    args = argparse.Namespace(**args_dict)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run_baseline_command(args.data, Path(tmp), columns_from_args(args), args.folds, args.seed, args.n_boot,
                                 args.jobs, args.permute_labels, Progress())
        except InputError as e:
            return {"error": str(e)}
        return {"files": {p.name: p.read_bytes() for p in Path(tmp).iterdir()}, "node": ray.get_runtime_context().get_node_id()}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(["baseline", *(sys.argv[1:] if argv is None else argv)])
    ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    args.jobs = args.jobs or 2
    task_args = {k: v for k, v in vars(args).items() if k != "func"}
    result = ray.get(baseline_task.options(num_cpus=args.jobs).remote(task_args))
    if "error" in result:
        print(f"scanner: error: {result['error']}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in result["files"].items():
        (out / name).write_bytes(data)
    print(f"baseline ran on node {result['node'][:12]}; report: {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
