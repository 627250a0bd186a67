"""`scanner hessian`'s inner cost: samples per second for Hutchinson's trace on the tiny GPT-2.

    python bench/hessian_throughput.py [--probes 16] [--tokens 64] [--samples 8] [--threads N]

The tiny GPT-2 of the tests (2 layers, 128 wide, BPE vocabulary 2048; random weights: the cost
does not depend on them) and English passages cut to --tokens tokens. Measured in one process:
a plain forward pass per sample (the reference), the forward + gradient graph alone, and the
full measurement with --probes Hessian-vector products, and with Lanczos (20 steps) added.
Printed as one JSON object; the ratios are within this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.hessian.curvature import EmbeddingLoss, measure
    from scanner.toy import bpe_tokenizer, english_passages

    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    passages = english_passages()
    tok = bpe_tokenizer(passages, 2048)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=128, n_layer=2, n_head=4,
                                       attn_implementation="eager")).eval().requires_grad_(False)
    rows = [tok(p)["input_ids"][: args.tokens] for p in passages if len(tok(p)["input_ids"]) >= args.tokens]
    rows = rows[: args.samples]

    def timed(f) -> float:
        f(rows[0])  # warm-up
        t0 = time.perf_counter()
        for r in rows:
            f(r)
        return len(rows) / (time.perf_counter() - t0)

    with torch.no_grad():
        forward = timed(lambda r: model(input_ids=torch.tensor([r])))
    graph = timed(lambda r: EmbeddingLoss(model, r))
    trace = timed(lambda r: measure(model, r, args.probes, None, seed=0))
    both = timed(lambda r: measure(model, r, args.probes, 20, seed=0))
    print(json.dumps({"model": "gpt2 2x128, vocab 2048", "tokens": args.tokens, "probes": args.probes,
                      "threads": torch.get_num_threads(), "samples": len(rows),
                      "samples_per_s": {"forward": round(forward, 1), "gradient_graph": round(graph, 1),
                                        f"trace_{args.probes}_probes": round(trace, 2),
                                        "trace_and_lanczos_20": round(both, 2)},
                      "trace_cost_in_forwards": round(forward / trace, 1)}, indent=1))


if __name__ == "__main__":
    main()
