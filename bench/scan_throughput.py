"""Scoring throughput in one process and one run, `scanner scan` and `scanner sweep` with their
DEFAULT settings (the benchmark sets no scheduling option) against the scoring core:

  (a) the scoring core alone on all cores, before Ray starts: the scorer's forward passes + the
      per-sample feature function (scanner.scoring.stats.sample_features) on pre-perturbed
      texts, best of a few token budgets;
  (b) `scanner scan` end to end (read, perturb, schedule, score, write Parquet; Ray is started
      with its defaults before the clock starts: a cluster is up before a job arrives);
  (d) `scanner sweep` end to end over the same texts in 3 input files, with a detector (tiny
      mode only: a detector needs a scan with labels);
  (c) a FiMMIA-style loop: one text at a time, one model call for the loss and a second for
      the embedding;
  (e) a naive loop: one text at a time, loss and embedding from one call;
  (f) the bare forward: the same texts (and neighbors), batched as the scorer batches them, the
      model's logits computed and nothing else (no statistics, no features): what (a) costs
      beyond it is the price of every score (issue 32: a costs <= 1.25x f).

    python bench/scan_throughput.py                         # tiny: 9M GPT-2, 300 pydoc texts x 25
    python bench/scan_throughput.py --size real [--model DIR] [--texts 300]
        # SmolLM2-135M (bench/smollm2_checkpoint.py makes one; else a random-init model of its
        # shape: 30 layers, 576 wide, 49,152 vocabulary), WikiMIA-32 texts, 0 and 8 neighbors

Targets (issue 10): tiny: b/a >= 0.8, d/a >= 0.85; real: b/a >= 0.8 and b >= 1.5x the naive loop;
(issue 32): real: f/a <= 1.25 (a's time over f's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(path: Path, texts: list[str]) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.toy import bpe_tokenizer

    tok = bpe_tokenizer(texts, 16384)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=16384, n_positions=512, n_embd=256, n_layer=6, n_head=4)).save_pretrained(path)
    tok.save_pretrained(path)


def smollm2_shape(path: Path, texts: list[str]) -> None:
    """A random-init model of SmolLM2-135M's shape (speed does not depend on the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from scanner.toy import bpe_tokenizer

    tok = bpe_tokenizer(texts, 2048)  # the text side only; the model keeps SmolLM2's 49k-row head
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                 tie_word_embeddings=True)).save_pretrained(path)
    tok.save_pretrained(path)


def core(model: str, texts: list[str], cfg, budgets: list[int]) -> tuple[float, int, int]:
    """(a): best tokens/s over a few token budgets, on every core; texts perturbed beforehand."""
    from scanner.neighbors import make_neighbors
    from scanner.scoring import stats
    from scanner.scoring.hf import HFScorer

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    scorer = HFScorer(model)
    groups = [[t] + make_neighbors(t, str(i), cfg.neighbor_config())[0] for i, t in enumerate(texts)]
    n_tokens = sum(len(r) for g in groups for r in scorer.tokenize(g)[0])
    proj = stats.projection_matrix(scorer.hidden_size, cfg.proj_dim, cfg.seed)
    best, best_budget = 0.0, 0
    for budget in budgets:
        t0 = time.perf_counter()
        for i in range(0, len(groups), cfg.samples_per_call):  # the calls the actor makes
            call = groups[i:i + cfg.samples_per_call]
            res = scorer.score_texts([t for g in call for t in g], batch_tokens=budget)
            k = 0
            for g in call:
                stats.sample_features(g[0], res[k], res[k + 1:k + len(g)], proj)
                k += len(g)
        rate = n_tokens / (time.perf_counter() - t0)
        print(f"  (a) batch_tokens={budget}: {rate:,.0f} tokens/s", flush=True)
        if rate > best:
            best, best_budget = rate, budget
    return best, best_budget, n_tokens, bare_forward(scorer, groups, best_budget, n_tokens)


def bare_forward(scorer, groups: list[list[str]], budget: int, n_tokens: int) -> float:
    """(f): tokens/s of the model's forward alone (logits, nothing else), batched as (a) batches."""
    from scanner.scoring.hf import right_padded

    ids = [r for g in groups for r in scorer.tokenize(g)[0]]
    order = sorted(ids, key=len, reverse=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        start = 0
        while start < len(order):
            size = max(1, budget // len(order[start]))
            x, mask = right_padded(order[start:start + size], scorer.tokenize.pad_id)
            scorer.model(input_ids=x, attention_mask=mask).logits
            start += size
    return n_tokens / (time.perf_counter() - t0)


def write_jsonl(path: Path, texts: list[str], labels: bool) -> None:
    """Labels only so that (d) has a detector that separates something (the length of the text:
    a random-init model has no membership signal, and a sweep refuses a detector without any)."""
    median = sorted(len(t) for t in texts)[len(texts) // 2]
    path.write_text("".join(json.dumps({"id": str(i), "text": t} | ({"label": int(len(t) > median)} if labels else {}))
                            + "\n" for i, t in enumerate(texts)))


def scan(model: str, texts: list[str], neighbors: int, work: Path) -> float:
    """(b): `scanner scan` with its defaults."""
    from scanner.config import ScanConfig
    from scanner.scan import run_scan

    write_jsonl(work / "bench.jsonl", texts, labels=True)
    shutil.rmtree(work / "run", ignore_errors=True)
    t0 = time.perf_counter()
    m = run_scan([str(work / "bench.jsonl")], work / "run", ScanConfig(model=model, neighbors=neighbors).validate(),
                 progress=lambda msg: None)
    return m["tokens_scored_this_invocation"] / (time.perf_counter() - t0)


def sweep(texts: list[str], work: Path) -> float:
    """(d): a detector trained on (b)'s features, then `scanner sweep` with its defaults."""
    from scanner.config import load_config
    from scanner.train import train_detectors
    from scanner.detector.trained import load_trained
    from scanner.sweep import run_sweep

    train_detectors(str(work / "run"), str(work / "detector"))
    detector = load_trained(work / "detector")
    inputs = []
    for k in range(3):
        write_jsonl(work / f"part-{k}.jsonl", texts[k::3], labels=False)
        inputs.append(str(work / f"part-{k}.jsonl"))
    cfg = load_config(None, {"label_col": None}, base=detector.base_config())
    t0 = time.perf_counter()
    run_sweep(inputs, str(work / "sweep"), detector, cfg, progress=lambda m: None)
    wall = time.perf_counter() - t0
    m = json.loads((work / "sweep" / "manifest.json").read_text())
    assert m["counts"]["scored"] == len(texts) and m["capabilities"]["vocab_stats"]
    return m["tokens_scored_this_invocation"] / wall


def per_text_loop(model_path: str, texts: list[str], cfg, two_calls: bool) -> float:
    """(c) two calls per text, FiMMIA-style; (e) one call per text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scanner.neighbors import make_neighbors

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    n_tokens = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, text in enumerate(texts):
            for t in [text] + make_neighbors(text, str(i), cfg.neighbor_config())[0]:
                ids = torch.tensor([[prefix] + tok(t)["input_ids"][:511]])
                out = model(input_ids=ids, labels=ids, output_hidden_states=not two_calls)
                out.loss.item()
                if two_calls:
                    model(input_ids=ids, output_hidden_states=True).hidden_states[-1].mean(1)
                else:
                    out.hidden_states[-1].mean(1)
                n_tokens += ids.shape[1]
    return n_tokens / (time.perf_counter() - t0)


def wikimia_texts(n: int) -> list[str]:
    rows = [json.loads(line) for line in (ROOT.parent / "shared" / "data" / "wikimia" / "32.jsonl").open()]
    return [r["input"] for r in rows[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "real"], default="tiny")
    ap.add_argument("--model", help="real size: a SmolLM2-135M folder (default: random init of its shape)")
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--neighbors", default=None, help="comma-separated (default: 24 tiny, 0,8 real)")
    ap.add_argument("--loop-texts", type=int, default=60, help="texts for the per-text loops (rates are per token)")
    ap.add_argument("--budgets", default="1024,4096", help="token budgets tried for the core (its best counts)")
    args = ap.parse_args()

    import ray

    from scanner.config import ScanConfig
    from scanner.toy import english_passages

    work = Path(tempfile.mkdtemp(prefix="scan_bench_"))
    if args.size == "tiny":
        passages = english_passages(50, 150)
        texts = [passages[i % len(passages)] for i in range(args.texts)]
        model = str(work / "model")
        tiny_model(work / "model", english_passages())
        label = "GPT-2 style, random init, 9.1M parameters, vocab 16384"
    else:
        texts = wikimia_texts(args.texts)
        model = args.model or str(work / "model")
        if not args.model:
            smollm2_shape(work / "model", texts)
        label = f"SmolLM2-135M {'(' + args.model + ')' if args.model else '(random init of its shape)'}"
    neighbor_counts = [int(k) for k in (args.neighbors or ("24" if args.size == "tiny" else "0,8")).split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    print(f"model: {label}; {len(texts)} texts; {len(os.sched_getaffinity(0))} cores; scan and sweep with default "
          "settings", flush=True)
    results = {k: {} for k in neighbor_counts}
    for k in neighbor_counts:  # before Ray starts: the core alone on an idle machine
        rate, budget, n_tokens, bare = core(model, texts, ScanConfig(model=model, neighbors=k).validate(), budgets)
        results[k] |= {"a": rate, "best_budget": budget, "f": bare, "a_time_over_f": bare / rate}
        print(f"(a) {k} neighbors: scoring core, all cores: {rate:,.0f} tokens/s (best at batch_tokens={budget}; "
              f"{n_tokens:,} tokens)", flush=True)
        print(f"(f) {k} neighbors: bare forward (logits only): {bare:,.0f} tokens/s   every score costs "
              f"{bare / rate:.2f}x it", flush=True)
    ray.init(include_dashboard=False, log_to_driver=False)  # Ray's defaults
    for k, r in results.items():
        r["b"] = scan(model, texts, k, work)
        print(f"(b) {k} neighbors: scanner scan, defaults: {r['b']:,.0f} tokens/s   b/a = {r['b'] / r['a']:.2f}",
              flush=True)
        if args.size == "tiny":
            r["d"] = sweep(texts, work)
            print(f"(d) {k} neighbors: scanner sweep, defaults: {r['d']:,.0f} tokens/s   d/a = {r['d'] / r['a']:.2f}",
                  flush=True)
    ray.shutdown()
    for k, r in results.items():
        cfg = ScanConfig(model=model, neighbors=k).validate()
        r["c"] = per_text_loop(model, texts[: args.loop_texts], cfg, two_calls=True)
        r["e"] = per_text_loop(model, texts[: args.loop_texts], cfg, two_calls=False)
        print(f"(c) {k} neighbors: FiMMIA-style loop (two calls per text): {r['c']:,.0f} tokens/s   "
              f"b/c = {r['b'] / r['c']:.2f}")
        print(f"(e) {k} neighbors: naive loop (one call per text): {r['e']:,.0f} tokens/s   b/e = {r['b'] / r['e']:.2f}")
        r |= {f"b_over_{x}": r["b"] / r[x] for x in ("a", "c", "e")} | ({"d_over_a": r["d"] / r["a"]} if "d" in r else {})
    print(json.dumps({"size": args.size, "model": label, "texts": len(texts), "results": results}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
