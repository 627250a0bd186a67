"""Dataset inference on a real pretrained model (issue 12's acceptance, README table):

    python bench/smollm2_checkpoint.py --out /work/models/smollm2-135m      # once
    python bench/smollm2_infer.py --model /work/models/smollm2-135m --work /work/inf

800 of CPython's pydoc passages (english_passages(18, 160), seeded shuffle): 400 suspect, of
which the first 200 are LoRA-tuned into a copy for one epoch (scanner.calibrate's fine-tune and
defaults), and 400 unseen references. Then `scanner infer` three times, without neighbors:
under the tuned copy, under it again with the untouched model as `--reference-model`, and under
the untouched model. Each run's verdict, p-value and wall time are printed as JSON; the run
folders stay in --work (rerunning resumes everything). ~35 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(work: Path, model: str) -> None:
    from scanner.calibrate.finetune import FinetuneSpec, finetune
    from scanner.calibrate.split import training_stream
    from scanner.toy import english_passages

    work.mkdir(parents=True, exist_ok=True)
    p = english_passages(18, 160)
    order = np.random.default_rng(0).permutation(len(p))
    suspect, reference = [p[i] for i in order[:400]], [p[i] for i in order[400:800]]
    for name, texts in (("suspect", suspect), ("reference", reference)):
        (work / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{i}", "text": t, "seen": int(name == "suspect" and i < 200)}) + "\n"
            for i, t in enumerate(texts)))
    spec = FinetuneSpec(model=model, method="lora", epochs=1).validate()
    finetune(asdict(spec), suspect[:200], training_stream([1] * 200, 1, 0), str(work / "tuned"))
    (work / "tuned.yaml").write_text(f"adapter: {work / 'tuned' / 'model'}\nshard_size: 100\n")
    (work / "base.yaml").write_text("shard_size: 100\n")


def infer(work: Path, model: str, name: str, config: str, *extra: str) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "scanner.cli", "infer", str(work / "suspect.jsonl"), "--reference",
                          str(work / "reference.jsonl"), "--model", model, "--config", str(work / config),
                          "--neighbors", "0", "--out", str(work / name), *extra], capture_output=True, text=True)
    if res.returncode not in (0, 1):
        raise SystemExit(res.stderr[-3000:])
    m = json.loads((work / name / "metrics.json").read_text())
    return {"verdict": m["verdict"], "p_value": m["p_value"], "effect_size": m["test"]["effect_size"],
            "blind_baseline_auc_ci": m["blind_baseline"]["auc_ci"], "features": len(m["features"]),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the untouched model (a local fp32 checkpoint)")
    ap.add_argument("--work", default="/tmp/smollm2_infer")
    args = ap.parse_args()
    work = Path(args.work)
    prepare(work, args.model)
    out = {"tuned": infer(work, args.model, "run_tuned", "tuned.yaml")}
    out["tuned_with_reference_model"] = infer(work, args.model, "run_tuned_ref", "tuned.yaml", "--reference-model",
                                              args.model)
    out["untouched"] = infer(work, args.model, "run_base", "base.yaml")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
