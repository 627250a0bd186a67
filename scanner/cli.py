"""`scanner` command line. Exit codes: 0 done, 2 bad input or usage (message names the problem)."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from scanner.corpus import Columns, Corpus, read_corpus
from scanner.errors import InputError
from scanner.provenance import package_versions

EXIT_BAD_INPUT = 2


class Progress:
    """Timestamped progress lines on stderr (stdout stays for results)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[scanner +{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _add_corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", help="files, folders or globs: jsonl, parquet, csv/tsv, HF save_to_disk folders")
    p.add_argument("--text-col", default=None, help="text column (default: 'text', else 'input')")
    p.add_argument("--label-col", default="label", help="label column, 1 = member, 0 = non-member (default: label)")
    p.add_argument("--id-col", default=None, help="id column (default: 'id' where present, else a hash of source+text)")
    p.add_argument("--source-col", default=None, help="source column (default: the file's path)")


def columns_from_args(args) -> Columns:
    return Columns(text=args.text_col, label=args.label_col, id=args.id_col, source=args.source_col)


def run_baseline_command(data: list[str], out: Path, columns: Columns, folds: int, seed: int, n_boot: int,
                         jobs: int | None, permute_labels: bool, progress: Progress) -> dict:
    from scanner.baseline.run import run_baseline
    from scanner.report import baseline_blocks, write_report

    corpus: Corpus = read_corpus(data, columns, progress=progress)
    counts = corpus.counts
    progress(f"{counts['read']} rows read: {counts['kept']} kept, {counts['quarantined']} quarantined "
             f"{counts['quarantined_by_reason'] or ''}")
    samples = corpus.labelled()
    if permute_labels:  # negative control: the verdict on shuffled labels should be "usable"
        rng = np.random.default_rng(seed)
        samples = samples.with_columns(pl.Series("label", rng.permutation(samples["label"].to_numpy())))
        progress(f"labels permuted (seed {seed}): a negative control")
    result = run_baseline(samples, folds=folds, seed=seed, n_boot=n_boot, n_jobs=jobs, progress=progress)
    metrics = result.metrics | {
        "inputs": corpus.files,
        "corpus": counts,
        "permuted_labels": permute_labels,
        "versions": package_versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    corpus.quarantine.write_parquet(out / "quarantine.parquet")
    result.scores.write_parquet(out / "scores.parquet")
    y = result.scores["label"].to_numpy()
    curves = {"auto (nested CV)": (y, result.scores["score"].to_numpy())} | {
        fam: (y, result.scores[f"score_{fam}"].to_numpy()) for fam in result.metrics["models"]
    }
    title = "Leakage baseline" + (" (labels permuted: negative control)" if permute_labels else "")
    paths = write_report(out, title, baseline_blocks(metrics, curves, corpus.files, counts), metrics)
    return metrics | {"_report": str(paths["html"])}


def _print_summary(m: dict) -> None:
    lo, hi = m["auc_ci"]
    tprs = ", ".join(f"TPR@{float(f):.1%}={v:.3f}{'' if m['tpr_at_fpr_estimable'][f] else '*'}"
                     for f, v in m["tpr_at_fpr"].items())
    print(f"AUC {m['auc']:.3f} [{lo:.3f}, {hi:.3f}]  {tprs}  best model: {m['best_model']}")
    print(f"verdict: {m['verdict']['status']}: {m['verdict']['text']}")
    print(f"report: {m['_report']}")


def cmd_baseline(args) -> int:
    m = run_baseline_command(args.data, Path(args.out), columns_from_args(args), args.folds, args.seed, args.n_boot,
                             args.jobs, args.permute_labels, Progress())
    _print_summary(m)
    return 0


def cmd_demo(args) -> int:
    """Embedded default: the leakage baseline on WikiMIA (128-word split, shipped in the package)
    and on the same file with permuted labels, a negative control."""
    data = str(resources.files("scanner") / "data" / "wikimia_128.jsonl")
    out = Path(args.out)
    progress = Progress()
    for name, permute in (("wikimia128", False), ("wikimia128_permuted", True)):
        print(f"== {name}: leakage baseline{' on permuted labels' if permute else ''}")
        m = run_baseline_command([data], out / name, Columns(), 5, args.seed, 1000, None, permute, progress)
        _print_summary(m)
    return 0


def cmd_scan(args) -> int:
    from scanner.config import load_config
    from scanner.pipeline import run_scan

    overrides = {"model": args.model, "neighbors": args.neighbors, "batch_tokens": args.batch_tokens,
                 "seed": args.seed, "actors": args.actors, "revision": args.revision, "shard_size": args.shard_size,
                 "trust_remote_code": args.trust_remote_code or None, "text_col": args.text_col,
                 "label_col": args.label_col, "id_col": args.id_col, "source_col": args.source_col}
    cfg = load_config(args.config, overrides)
    m = run_scan(args.data, Path(args.out), cfg, progress=Progress())
    c = m["counts"]
    print(f"scanned {c['scored']} samples ({c['scored_this_invocation']} this run, {c['shards_skipped']} shards "
          f"skipped), {c['quarantined']} quarantined; {m['tokens_per_second'] or 0:.0f} tokens/s")
    print(f"features: {Path(args.out) / 'features'}  manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("baseline", help="model-free leakage baseline: is this member/non-member split usable for MIA?")
    _add_corpus_args(b)
    b.add_argument("--out", required=True, help="output folder: metrics.json, report.md, report.html, scores.parquet, quarantine.parquet")
    b.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (default 5)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUC CI (default 1000)")
    b.add_argument("--jobs", type=int, default=None, help="parallel folds (default: one per CPU)")
    b.add_argument("--permute-labels", action="store_true", help="negative control: shuffle labels first")
    b.set_defaults(func=cmd_baseline)

    s = sub.add_parser("scan", help="score texts and their neighbors under a model: Parquet feature shards")
    _add_corpus_args(s)
    s.set_defaults(label_col=None)
    s.add_argument("--model", help="hub id or local path of a causal LM")
    s.add_argument("--out", required=True, help="run folder (re-running resumes it)")
    s.add_argument("--config", help="YAML or TOML file with any scan option; flags override it")
    s.add_argument("--neighbors", type=int, help="neighbors per text (default 24)")
    s.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass (default 16384)")
    s.add_argument("--seed", type=int)
    s.add_argument("--actors", type=int, help="scoring actors (default 1)")
    s.add_argument("--shard-size", type=int, help="samples per resumable shard (default 1000)")
    s.add_argument("--revision", help="model revision (branch, tag or commit)")
    s.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")
    s.set_defaults(func=cmd_scan)

    d = sub.add_parser("demo", help="run the embedded default end to end")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "folds", 2) < 2:
        print("scanner: error: --folds must be at least 2", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.func(args)
    except InputError as e:
        print(f"scanner: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
