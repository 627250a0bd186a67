"""The HF scoring core on a GPU, against the raw model forward and the GPU's own matmul rate.

    python bench/gpu_scoring_core.py [--preset 1b|tiny] [--samples 16] [--out results.json]

Model: Llama-3.2-1B shapes (16 layers, hidden 2048, GQA 32/8 heads, MLP 8192, vocab 128256,
tied head; 1.24B parameters), random init (speed does not depend on the weights), bf16 on a GPU.
Inputs: `--samples` texts of `--tokens` tokens (default 512), each with 24 neighbors (10% of the
tokens replaced), as token ids; both modes run the same padded batches (same token budget).

  (a) raw forward: model(input_ids) with full logits, nothing else;
  (b) scoring core: HFScorer.score_ids (log-probs, Min-K%++ statistics, embeddings) plus the
      per-sample score maths (stats.text_scores, stats.neighbor_features), as the actor runs it.

Achieved TFLOP/s counts 2 x (parameters in matmuls) + 4 x layers x context x hidden per token
(forward, causal attention counted in full) and is compared with a measured bf16 matmul rate
(8192^3 GEMMs). Targets (issue 6): b/a >= 0.8 and b >= 40% of the matmul rate. Needs only
torch, transformers and numpy (no Ray): it runs on the lent GPU machine as it is.
`--preset tiny` runs in seconds on a CPU (a smoke test of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

PRESETS = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=True, max_position_embeddings=512),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(device: str, dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def build(preset: str, path: Path, device: str, dtype: torch.dtype) -> tuple[int, object]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from scanner.toy import bpe_tokenizer, english_passages

    torch.manual_seed(0)
    config = LlamaConfig(**PRESETS[preset])
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    bpe_tokenizer(english_passages()[:50], 512).save_pretrained(path)  # the scorer needs a tokenizer (BOS)
    n_params = sum(p.numel() for p in model.parameters())
    return n_params, config


def make_inputs(n_samples: int, n_tokens: int, k: int, vocab: int, bos: int, seed: int = 0) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_samples):
        orig = rng.integers(10, vocab, n_tokens - 1)
        texts = [orig]
        for _ in range(k):
            nb = orig.copy()
            where = rng.choice(len(nb), max(1, len(nb) // 10), replace=False)
            nb[where] = rng.integers(10, vocab, len(where))
            texts.append(nb)
        groups.append([[bos, *map(int, t)] for t in texts])
    return groups


def batches(ids: list[list[int]], budget: int) -> list[list[list[int]]]:
    """The scorer's own batching (sorted by length, token budget), for the raw forward."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out, start = [], 0
    while start < len(order):
        size = max(1, budget // len(ids[order[start]]))
        out.append([ids[i] for i in order[start:start + size]])
        start += size
    return out


@torch.no_grad()
def raw_forward(model, groups, budget: int, device: str) -> float:
    flat = [t for g in groups for t in g]
    n_tokens = sum(len(t) for t in flat)
    prepared = [torch.tensor(b, device=device) for b in batches(flat, budget)]  # equal lengths: no padding
    model(input_ids=prepared[0])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for ids in prepared:
        model(input_ids=ids).logits
    sync(device)
    return n_tokens / (time.perf_counter() - t0)


def scoring_core(scorer, groups, budget: int, samples_per_call: int, proj_dim: int) -> float:
    from scanner.scoring import stats

    n_tokens = sum(len(t) for g in groups for t in g)
    proj = stats.projection_matrix(scorer.hidden_size, proj_dim, 0)
    dummy_text = "x" * 2000  # zlib's input: a text of a 512-token sample's length
    scorer.score_ids(groups[0][:2], batch_tokens=budget)  # warm-up
    sync(scorer.device)
    t0 = time.perf_counter()
    for i in range(0, len(groups), samples_per_call):  # the calls the scoring actor makes
        call = groups[i:i + samples_per_call]
        res = scorer.score_ids([t for g in call for t in g], batch_tokens=budget)
        k = 0
        for g in call:
            orig, nbs = res[k], res[k + 1:k + len(g)]
            s = stats.text_scores(dummy_text, *orig[:4])
            stats.neighbor_features(s["loss"], orig[4], [-x[0].mean() for x in nbs], [x[4] for x in nbs], proj)
            k += len(g)
    sync(scorer.device)
    return n_tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="1b")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--neighbors", type=int, default=24)
    ap.add_argument("--budgets", default="16384,32768,65536", help="padded tokens per forward pass to try")
    ap.add_argument("--samples-per-call", type=int, default=16)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    from scanner.scoring.hf import HFScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak = matmul_tflops(device, dtype, 8192 if device == "cuda" else 512, 50 if device == "cuda" else 3)
    print(f"{gpu}, torch {torch.__version__}: measured {str(dtype).removeprefix('torch.')} matmul {peak:.1f} TFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        n_params, config = build(args.preset, Path(tmp), device, dtype)
        scorer = HFScorer(tmp, device=device, dtype=str(dtype).removeprefix("torch."))
    model = scorer.model
    groups = make_inputs(args.samples, args.tokens, args.neighbors, config.vocab_size, scorer.tokenize.prefix_id or 1)
    n_tokens = sum(len(t) for g in groups for t in g)
    flops_per_token = 2 * n_params + 4 * config.num_hidden_layers * args.tokens * config.hidden_size
    print(f"model: {args.preset} Llama, {n_params / 1e9:.3f}B parameters; {args.samples} samples x (1 + "
          f"{args.neighbors}) texts x {args.tokens} tokens = {n_tokens:,} tokens; split head: {scorer.split_head}")
    rows = []
    for budget in map(int, args.budgets.split(",")):
        a = raw_forward(model, groups, budget, device)
        b = scoring_core(scorer, groups, budget, args.samples_per_call, 8)
        tflops = b * flops_per_token / 1e12
        rows.append({"batch_tokens": budget, "raw_tokens_per_s": a, "core_tokens_per_s": b, "b_over_a": b / a,
                     "core_tflops": tflops, "core_fraction_of_matmul": tflops / peak})
        print(f"batch_tokens={budget:>6}: (a) raw forward {a:,.0f} tok/s  (b) scoring core {b:,.0f} tok/s  "
              f"b/a {b / a:.2f}  core {tflops:.1f} TFLOP/s = {tflops / peak:.0%} of matmul")
        if device == "cuda":
            torch.cuda.empty_cache()
    best = max(rows, key=lambda r: r["core_tokens_per_s"])
    print(f"best: batch_tokens={best['batch_tokens']}: b/a {best['b_over_a']:.2f} (target >= 0.8), "
          f"{best['core_fraction_of_matmul']:.0%} of the matmul rate (target >= 40%)")
    result = {"device": gpu, "torch": torch.__version__, "dtype": str(dtype), "matmul_tflops": peak,
              "preset": args.preset, "parameters": n_params, "tokens": n_tokens, "flops_per_token": flops_per_token,
              "rows": rows, "best": best}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
