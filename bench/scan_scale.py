"""Does the driver hold data? Peak RSS of the driver process of `scanner scan` over 2k, 20k and
100k short documents, and of `scanner sweep` over ONE 100k-row file, which must be cut into
shards; then that sweep is killed after some shards and run again, which must re-score none of
the shards that finished.

    python bench/scan_scale.py [--sizes 2000,20000,100000] [--neighbors 2] [--shard-size 1000]
                               [--sweep-rows N] [--kill-after 20]

One local Ray (started here, like a cluster that is up before the jobs arrive); each scan or
sweep is a separate driver process connected to it (the `scanner` CLI with RAY_ADDRESS), whose
peak RSS is its own VmHWM, written at exit (ru_maxrss would not do: Linux carries the forking
parent's high-water mark, this bench's ~1 GB, into the child's), not Ray's. Model: a tiny GPT-2 trained here on half of the
pydoc passages (~1 minute), so that the sweep's detector really separates members.
Target (issue 10): driver peak RSS grows by at most 50 MB from 2k to 100k documents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def documents(n: int, path: Path, seed: int = 0) -> None:
    """n short documents (12-30 words) drawn from the pydoc passages' vocabulary."""
    from scanner.toy import english_passages

    words = sorted({w for p in english_passages() for w in p.split()})
    rnd = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc{i}", "text": " ".join(rnd.choices(words, k=rnd.randint(12, 30)))}) + "\n")


# the CLI, writing its own VmHWM (this process's mm only) to argv[1] when it exits
CLI = """import atexit, re, sys
def hwm():
    kb = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
    open(sys.argv[1], "w").write(kb)
atexit.register(hwm)
from scanner.cli import main
sys.exit(main(sys.argv[2:]))
"""


def vm_hwm_mb(pid: int) -> float | None:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return None


def driver(args: list[str], env: dict, kill_when=None) -> tuple[int, float, float]:
    """(exit code, peak RSS in MB, seconds) of one `scanner` driver process; kill_when() -> True
    SIGKILLs it (checked every 0.2 s; its peak is then the last one read before the kill)."""
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".hwm") as f:
        proc = subprocess.Popen([sys.executable, "-c", CLI, f.name, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        peak = 0.0
        while kill_when is not None and proc.poll() is None:
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
            if kill_when():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
        err = proc.communicate()[1]
        written = Path(f.name).read_text()
    if proc.returncode not in (0, -9):
        print(err[-3000:])
    return proc.returncode, int(written) / 1024 if written else peak, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,20000,100000")
    ap.add_argument("--neighbors", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--sweep-rows", type=int, help="rows of the swept file (default: the largest size)")
    ap.add_argument("--kill-after", type=int, default=20, help="shards finished before the sweep is killed")
    args = ap.parse_args()

    import ray

    from scanner.toy import english_passages, member_split, train_tiny_gpt2

    work = Path(tempfile.mkdtemp(prefix="scan_scale_"))
    passages = english_passages()
    members, _ = member_split(passages)
    train_tiny_gpt2(members, passages, work / "model", log=lambda m: None)
    ray.init(include_dashboard=False, log_to_driver=False)
    env = os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    common = ["--model", str(work / "model"), "--neighbors", str(args.neighbors), "--shard-size", str(args.shard_size)]

    print(f"driver peak RSS, `scanner scan` ({args.neighbors} neighbors, shards of {args.shard_size}):")
    rss = {}
    for n in map(int, args.sizes.split(",")):
        documents(n, work / f"docs-{n}.jsonl")
        code, rss[n], secs = driver(["scan", str(work / f"docs-{n}.jsonl"), "--out", str(work / f"scan-{n}"), *common], env)
        m = json.loads((work / f"scan-{n}" / "manifest.json").read_text())
        assert code == 0 and m["counts"]["scored"] == n, (code, m["counts"])
        print(f"  {n:>7} documents: {rss[n]:6.0f} MB peak RSS, {secs:6.1f} s, {m['counts']['shards']} shards, "
              f"{m['tokens_per_second']:,.0f} tokens/s")
    sizes = sorted(rss)
    growth = rss[sizes[-1]] - rss[sizes[0]]
    print(f"  growth {sizes[0]} -> {sizes[-1]}: {growth:+.0f} MB (target <= 50 MB): {'met' if growth <= 50 else 'MISSED'}")

    # a detector for the sweep: labelled passages scanned under the same model
    labelled = work / "labelled.jsonl"
    member_set = set(members)
    labelled.write_text("".join(json.dumps({"text": t, "label": int(t in member_set)}) + "\n" for t in passages))
    code, _, _ = driver(["scan", str(labelled), "--out", str(work / "scan-labelled"), *common], env)
    code = code or driver(["train", str(work / "scan-labelled"), "--out", str(work / "detector")], env)[0]
    assert code == 0
    big = args.sweep_rows or sizes[-1]
    if not (work / f"docs-{big}.jsonl").exists():
        documents(big, work / f"docs-{big}.jsonl")
    sweep = ["sweep", str(work / f"docs-{big}.jsonl"), "--detector", str(work / "detector"), "--out", str(work / "sweep"),
             "--shard-size", str(args.shard_size)]
    done = work / "sweep" / "done"

    def finished() -> set[str]:
        return {p.name for p in done.glob("*.json")} if done.exists() else set()

    code, peak, secs = driver(sweep, env, kill_when=lambda: len(finished()) >= args.kill_after)
    while any(a["ActorClassName"] == "ScoreActor" and a["State"] != "DEAD"
              for a in ray._private.state.actors().values()):  # the GCS's table: no dashboard needed
        time.sleep(0.5)  # the dead driver's actors are stopped by Ray; a shard they were writing may still finish
    before = finished()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (work / "sweep" / "features").glob("*.parquet")}
    print(f"sweep of one {big}-row file: killed (exit {code}) after {len(before)} finished shards, {secs:.1f} s, "
          f"peak RSS {peak:.0f} MB")
    code, peak, secs = driver(sweep, env)
    m = json.loads((work / "sweep" / "manifest.json").read_text())
    states = [e["state"] for e in m["shards"]]
    skipped = {e["shard"] + ".json" for e in m["shards"] if e["state"] == "skipped"}
    rewritten = [n for n, t in mtimes.items() if n.removesuffix(".parquet") + ".json" in before
                 and (work / "sweep" / "features" / n).stat().st_mtime_ns != t]
    print(f"  run again: exit {code}, {len(states)} shards of <= {args.shard_size} rows: {states.count('skipped')} "
          f"skipped (finished before the kill: {len(before)}), {states.count('done')} scored now, "
          f"{m['counts']['scored_this_invocation']} documents scored now; finished shards rewritten: {len(rewritten)}; "
          f"peak RSS {peak:.0f} MB, {secs:.1f} s")
    ok = code == 0 and skipped == before and not rewritten and m["counts"]["scored"] == big
    print(f"  resume re-scores no finished shard: {'met' if ok else 'MISSED'}")
    print(json.dumps({"rss_mb": rss, "growth_mb": growth, "sweep_shards": len(states), "killed_after": len(before),
                      "skipped_on_resume": states.count("skipped"), "rewritten": len(rewritten)}))
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
