"""Scoring throughput, four ways, in one process and one run:

  (a) the scoring core alone: HFScorer forward passes + score maths on pre-tokenised,
      pre-perturbed inputs, at its best batch size;
  (b) `scanner scan` end to end: read, perturb, Ray Data scheduling, scoring, writing Parquet
      (Ray is started before the clock starts: a cluster is up before a job arrives);
  (c) a FiMMIA-style loop: one text at a time, neighbors made on the fly, one model call for the
      loss and a second call for the embedding;
  (d) `scanner sweep` end to end over the same texts in 3 input files: read tasks per file,
      scoring, the detector, per-shard outputs and markers, the per-source report.

    python bench/scan_throughput.py [--texts 300] [--neighbors 24]

Model: GPT-2 style, random init (speed does not depend on the weights), ~10M parameters, a
16,384-token vocabulary. Prints tokens/s of each and the ratios b/a, b/c and d/a.
Targets (issue 3, 2 CPU cores): b/a >= 0.7 and b/c >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch


def build_model(path: Path, texts: list[str]) -> int:
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.toy import bpe_tokenizer

    hf_tok = bpe_tokenizer(texts, 16384)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16384, n_positions=512, n_embd=256, n_layer=6, n_head=4))
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def core(model_path: str, texts: list[str], cfg) -> tuple[float, int, int]:
    """(a): best tokens/s over a few token budgets; inputs tokenised and perturbed beforehand."""
    from scanner.neighbors import make_neighbors
    from scanner.scoring import stats
    from scanner.scoring.hf import HFScorer

    scorer = HFScorer(model_path)
    groups = [[t] + make_neighbors(t, str(i), cfg.neighbor_config())[0] for i, t in enumerate(texts)]
    ids = [scorer.tokenize(g)[0] for g in groups]
    n_tokens = sum(len(r) for g in ids for r in g)
    proj = stats.projection_matrix(scorer.hidden_size, cfg.proj_dim, cfg.seed)
    best, best_budget = 0.0, 0
    for budget in (1024, 4096, 16384):
        t0 = time.perf_counter()
        for i in range(0, len(groups), cfg.samples_per_call):  # the same calls the actor makes
            call = groups[i:i + cfg.samples_per_call]
            call_ids = ids[i:i + cfg.samples_per_call]
            flat = [r for g in call_ids for r in g]
            res = scorer.score_ids(flat, batch_tokens=budget)
            k = 0
            for g in call:
                orig, nbs = res[k], res[k + 1:k + len(g)]
                s = stats.text_scores(g[0], orig[0], orig[1], orig[2])
                stats.neighbor_features(s["loss"], orig[3], [-x[0].mean() for x in nbs], [x[3] for x in nbs], proj)
                k += len(g)
        rate = n_tokens / (time.perf_counter() - t0)
        print(f"  (a) batch_tokens={budget}: {rate:,.0f} tokens/s")
        if rate > best:
            best, best_budget = rate, budget
    return best, best_budget, n_tokens


def end_to_end(model_path: str, texts: list[str], cfg, work: Path) -> tuple[float, int]:
    """(b): the real pipeline, as `scanner scan` runs it."""
    from scanner.pipeline import run_scan

    data = work / "bench.jsonl"  # labels only so that (d) has a detector to train; they mean nothing
    data.write_text("".join(json.dumps({"id": str(i), "text": t, "label": i % 2}) + "\n" for i, t in enumerate(texts)))
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = run_scan([str(data)], out, cfg, progress=lambda m: None)
    wall = time.perf_counter() - t0
    return manifest["tokens_scored_this_invocation"] / wall, manifest["tokens_scored_this_invocation"]


def sweep(texts: list[str], cfg, work: Path) -> float:
    """(d): a detector trained on (b)'s features, then the sweep over the texts in 3 files."""
    import polars as pl

    from scanner.config import load_config
    from scanner.detector.trained import load_trained
    from scanner.detector.train import train_detectors
    from scanner.sweep import run_sweep

    train_detectors(str(work / "run"), str(work / "detector"))
    detector = load_trained(work / "detector")
    inputs = []
    for k in range(3):
        path = work / f"shard-{k}.jsonl"
        path.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts) if i % 3 == k))
        inputs.append(str(path))
    scheduling = {key: getattr(cfg, key) for key in ("cpus_per_actor", "samples_per_call", "batch_tokens")}
    sweep_cfg = load_config(None, scheduling, base=detector.base_config())
    sweep_cfg.label_col = None
    out = work / "sweep"
    t0 = time.perf_counter()
    run_sweep(inputs, str(out), detector, sweep_cfg, progress=lambda m: None)
    wall = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["scored"] == len(texts)
    docs = pl.read_parquet(out / "docs" / "*.parquet")
    return int(docs["n_tokens"].sum() + docs["nb_tokens"].sum()) / wall


def fimmia_loop(model_path: str, texts: list[str], cfg) -> float:
    """(c): one text at a time; loss from one call, embedding from a second one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scanner.neighbors import make_neighbors

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    n_tokens = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, text in enumerate(texts):
            for t in [text] + make_neighbors(text, str(i), cfg.neighbor_config())[0]:
                ids = torch.tensor([[tok.bos_token_id] + tok(t)["input_ids"][:511]])
                model(input_ids=ids, labels=ids).loss.item()
                model(input_ids=ids, output_hidden_states=True).hidden_states[-1].mean(1)
                n_tokens += ids.shape[1]
    return n_tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--neighbors", type=int, default=24)
    ap.add_argument("--fimmia-texts", type=int, default=60, help="texts for (c), the slow loop (rate is per token)")
    args = ap.parse_args()

    import ray

    from scanner.config import ScanConfig
    from scanner.toy import english_passages

    passages = english_passages(50, 150)
    texts = [passages[i % len(passages)] for i in range(args.texts)]
    work = Path(tempfile.mkdtemp(prefix="scan_bench_"))
    n_params = build_model(work / "model", english_passages())
    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(cpus)
    cfg = ScanConfig(model=str(work / "model"), neighbors=args.neighbors, cpus_per_actor=cpus, shard_size=100,
                     samples_per_call=4)
    print(f"model: GPT-2 style, {n_params / 1e6:.1f}M parameters, vocab 16384; {len(texts)} texts x "
          f"(1 + {args.neighbors} neighbors); {cpus} CPU threads for the model in every mode")
    rate_a, budget, n_tokens = core(cfg.model, texts, cfg)
    print(f"(a) scoring core: {rate_a:,.0f} tokens/s (best at batch_tokens={budget}; {n_tokens:,} tokens)")

    cfg.batch_tokens = budget
    # logical CPUs beyond the cores, so read/perturb tasks run beside an actor that holds all cores
    ray.init(num_cpus=cpus * 2, include_dashboard=False, log_to_driver=False)
    rate_b, tokens_b = end_to_end(cfg.model, texts, cfg, work)
    print(f"(b) scanner scan end to end: {rate_b:,.0f} tokens/s ({tokens_b:,} tokens)")
    rate_d = sweep(texts, cfg, work)
    ray.shutdown()
    print(f"(d) scanner sweep end to end: {rate_d:,.0f} tokens/s")

    rate_c = fimmia_loop(cfg.model, texts[: args.fimmia_texts], cfg)
    print(f"(c) FiMMIA-style loop: {rate_c:,.0f} tokens/s ({args.fimmia_texts} texts)")
    print(f"b/a = {rate_b / rate_a:.2f} (target >= 0.7)   b/c = {rate_b / rate_c:.2f} (target >= 1.5)   "
          f"d/a = {rate_d / rate_a:.2f}")
    print(json.dumps({"a": rate_a, "b": rate_b, "c": rate_c, "d": rate_d, "b_over_a": rate_b / rate_a,
                      "b_over_c": rate_b / rate_c, "d_over_a": rate_d / rate_a,
                      "config": {k: v for k, v in asdict(cfg).items() if k in ("neighbors", "batch_tokens", "samples_per_call")}}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
