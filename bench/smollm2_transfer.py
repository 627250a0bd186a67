"""Does a detector calibrated on a LoRA copy of a real model keep its promise on the model itself
(issue 35's acceptance, README figures)?

    python bench/smollm2_checkpoint.py --out /work/models/smollm2-135m      # once
    python bench/smollm2_transfer.py --model /work/models/smollm2-135m --work /work/transfer

800 of CPython's pydoc passages (english_passages(18, 160), seeded shuffle), each cut to its first
60 words: `scanner calibrate` on the first 400 as the README runs it (default LoRA, --exposures
1,4, `neighbors: 6`), then `scanner sweep` of the other 400, which no model here ever saw, under
the untouched model with the calibrated detector. Prints the detectors' FPR under the tuned copy
and under the untouched model, their shift AUCs, and the sweep's estimate and interval (the truth
is 0). Every run resumes (the same command again only reprints). ~70 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = 60


def prepare(work: Path) -> None:
    from scanner.toy import english_passages

    work.mkdir(parents=True, exist_ok=True)
    p = english_passages(18, 160)
    order = np.random.default_rng(0).permutation(len(p))
    texts = [" ".join(p[i].split()[:WORDS]) for i in order[:800]]
    for name, part in (("heldout", texts[:400]), ("never_seen", texts[400:])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name}-{i}", "text": t}) + "\n"
                                                    for i, t in enumerate(part)))
    (work / "scan.yaml").write_text("neighbors: 6\n")


def scanner(*args: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "scanner.cli", *args], stdout=subprocess.PIPE, text=True)
    if res.returncode not in (0, 1):
        raise SystemExit(f"scanner {args[0]} exited {res.returncode}")
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the untouched model (a local fp32 checkpoint)")
    ap.add_argument("--work", default="/tmp/smollm2_transfer")
    args = ap.parse_args()
    work = Path(args.work)
    prepare(work)
    wall = {"calibrate": scanner("calibrate", str(work / "heldout.jsonl"), "--model", args.model, "--out",
                                 str(work / "cal"), "--config", str(work / "scan.yaml"), "--exposures", "1,4")}
    wall["sweep"] = scanner("sweep", str(work / "never_seen.jsonl"), "--detector", str(work / "cal" / "detector"),
                            "--out", str(work / "sweep_untouched"), "--accept-shift")
    cal = json.loads((work / "cal" / "metrics.json").read_text())
    sweep = json.loads((work / "sweep_untouched" / "metrics.json").read_text())
    print(json.dumps({"transfer": cal["transfer"], "detectors": cal["detectors"],
                      "sweep": {"detector": sweep["detector"]["name"], "overall": sweep["overall"],
                                "transfer": sweep["transfer"]}, "wall_s": wall}, indent=1))


if __name__ == "__main__":
    main()
