"""`scanner baseline` as a library call: read a labelled corpus, run the leakage baseline, write
its report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline
from scanner.corpus import Columns, read_corpus
from scanner.provenance import package_versions
from scanner.report import baseline_blocks, write_report


def baseline_report(data: list[str], out: Path, columns: Columns = Columns(), folds: int = 5, seed: int = 0,
                    n_boot: int = 1000, jobs: int | None = None, permute_labels: bool = False,
                    progress: Callable[[str], None] = lambda m: None) -> dict:
    """metrics.json's content, plus `_report`: the path of report.html."""
    corpus = read_corpus(data, columns, progress=progress)
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
    out = Path(out)
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
