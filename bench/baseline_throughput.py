"""Full leakage baseline (read -> features -> nested CV -> bootstrap -> reports) on N synthetic
documents of ~100 words. Prints documents/s and where the time went.

    python bench/baseline_throughput.py [--docs 100000] [--out /tmp/bench_baseline]

Documents are drawn from the English vocabulary of CPython's pydoc topics with Zipf-like
frequencies; members and non-members differ by a mild topic shift, so the models have real work.
Target (issue 32): 100k documents in under 60 s on 2 cores, the same nested-CV choice and AUC.
`--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from pydoc_data.topics import topics

from scanner.baseline.report import baseline_report
from scanner.progress import Progress


def synthetic_corpus(path: Path, n_docs: int, words: int, seed: int = 0) -> None:
    vocab = sorted({w.lower() for text in topics.values() for w in re.findall(r"[A-Za-z]{2,}", text)})
    vocab = np.array(vocab)
    rng = np.random.default_rng(seed)
    rng.shuffle(vocab)
    base = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    shifted = base.copy()
    shifted[500:700] *= 2.0  # members use a band of mid-frequency words twice as often
    labels = rng.integers(0, 2, n_docs)
    with path.open("w") as f:
        for label in (0, 1):
            p = (shifted if label else base) / (shifted if label else base).sum()
            idx = np.flatnonzero(labels == label)
            lengths = rng.integers(words - 20, words + 21, len(idx))
            tokens = rng.choice(len(vocab), size=(len(idx), words + 20), p=p)
            for i, n, toks in zip(idx, lengths, tokens):
                f.write(json.dumps({"id": f"doc{i}", "text": " ".join(vocab[toks[:n]]), "label": int(label)}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--out", default="/tmp/bench_baseline")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "synthetic.jsonl"
    t = time.perf_counter()
    synthetic_corpus(data, args.docs, args.words)
    print(f"generated {args.docs} documents in {time.perf_counter() - t:.1f}s ({data.stat().st_size / 1e6:.0f} MB)")

    t0 = time.perf_counter()
    m = baseline_report([str(data)], out / "report", progress=Progress())
    total = time.perf_counter() - t0
    fold_seconds = [f["seconds"] for f in m["folds"]]
    print(f"\nbaseline on {m['n']} documents: {total:.1f}s end to end, {m['n'] / total:.0f} documents/s")
    print(f"  nested CV: {m['seconds']:.1f}s in run_baseline (folds {', '.join(f'{s:.0f}s' for s in fold_seconds)}, "
          f"run in parallel)")
    print(f"  AUC {m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}], best model {m['best_model']}")
    print(f"  target: under 60s -> {'met' if total < 60 else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"docs": m["n"], "seconds": round(total, 2), "cv_seconds": m["seconds"],
                                               "auc": m["auc"], "best_model": m["best_model"],
                                               "chosen": [f["chosen"] for f in m["folds"]]}))


if __name__ == "__main__":
    main()
