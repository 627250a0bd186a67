"""Scans of several small eval sets in one driver, as nightly runs them: the scoring actors loaded
once and reused (parked between runs, the default) against loaded anew for every set (the
parked pool released before each scan), in the same run, alternating, on local Ray.

    python bench/warm_actors.py [--size tiny|real] [--model DIR] [--sets 6] [--texts 30]

tiny: the 9M GPT-2 of scan_throughput.py; real: SmolLM2-135M's shape (or --model). Prints the
seconds per set of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--model", help="a checkpoint folder (default: built here)")
    parser.add_argument("--sets", type=int, default=6)
    parser.add_argument("--texts", type=int, default=30)
    args = parser.parse_args()

    import ray

    from bench.scan_throughput import smollm2_shape, tiny_model
    from scanner import engine
    from scanner.config import ScanConfig
    from scanner.scan import run_scan
    from scanner.toy import english_passages

    texts = english_passages()
    work = Path(tempfile.mkdtemp(prefix="warm-actors-"))
    model = args.model
    if model is None:
        model = str(work / "model")
        (tiny_model if args.size == "tiny" else smollm2_shape)(Path(model), texts)
    sets = []
    for i in range(args.sets):
        path = work / f"set{i}.jsonl"
        chunk = texts[i * args.texts:(i + 1) * args.texts] or texts[:args.texts]
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
        sets.append(str(path))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = ScanConfig(model=model, neighbors=2, actors=1).validate()
    times: dict[str, list[float]] = {"reloaded": [], "reused": []}
    engine.release_parked()
    run_scan(sets[:1], work / "warm-up", cfg, progress=lambda m: None)  # the first load counts for neither
    for i, data in enumerate(sets):
        for mode in ("reloaded", "reused") if i % 2 == 0 else ("reused", "reloaded"):
            if mode == "reloaded":
                engine.release_parked()
            t0 = time.perf_counter()
            run_scan([data], work / f"{mode}-{i}", cfg, progress=lambda m: None)
            times[mode].append(time.perf_counter() - t0)  # (each scan leaves its pool parked for the next)
    for mode, ts in times.items():
        print(f"{mode:9s}: {statistics.median(ts):6.2f} s per set (median of {len(ts)}; min {min(ts):.2f}, max {max(ts):.2f})")
    print(f"reloading the model for every set takes {statistics.median(times['reloaded']) / statistics.median(times['reused']):.1f}x "
          f"as long per set ({args.size}, {args.texts} texts x 3 scored passes each)")
    ray.shutdown()


if __name__ == "__main__":
    main()
