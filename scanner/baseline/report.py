"""`scanner baseline` as a library call: read a labelled corpus, run the leakage baseline, write
its report folder."""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

from scanner.baseline.run import LEAKY_AUC, run_baseline
from scanner.corpus import Columns, read_corpus
from scanner.errors import InputError
from scanner.provenance import package_versions
from scanner.report import TPR_NOTE, fmt, fmt_auc, fmt_tpr, forest_png, roc_png, write_report
from scanner.storage import Store


def baseline_report(data: list[str], out: str, columns: Columns = Columns(), folds: int = 5, seed: int = 0,
                    n_boot: int = 1000, jobs: int | None = None, permute_labels: bool = False,
                    cv_repeats: int = 1, progress: Callable[[str], None] = lambda m: None) -> dict:
    """metrics.json's content, plus `_report`: the path of report.html."""
    if cv_repeats < 1:  # before any reading
        raise InputError(f"--cv-repeats must be at least 1, not {cv_repeats}")
    corpus = read_corpus(data, columns, progress=progress)
    counts = corpus.counts
    progress(f"{counts['read']} rows read: {counts['kept']} kept, {counts['quarantined']} quarantined "
             f"{counts['quarantined_by_reason'] or ''}")
    samples = corpus.labelled()
    if permute_labels:  # negative control: the verdict on shuffled labels should be "usable"
        rng = np.random.default_rng(seed)
        samples = samples.with_columns(pl.Series("label", rng.permutation(samples["label"].to_numpy())))
        progress(f"labels permuted (seed {seed}): a negative control")
    result = run_baseline(samples, folds=folds, seed=seed, n_boot=n_boot, n_jobs=jobs, repeats=cv_repeats,
                          progress=progress)
    metrics = result.metrics | {
        "inputs": corpus.files,
        "corpus": counts,
        "permuted_labels": permute_labels,
        "versions": package_versions(),
    }
    out = Store(str(out))
    out.write_parquet("quarantine.parquet", corpus.quarantine.to_arrow())
    out.write_parquet("scores.parquet", result.scores.to_arrow())
    y = result.scores["label"].to_numpy()
    curves = {"auto (nested CV)": (y, result.scores["score"].to_numpy())} | {
        fam: (y, result.scores[f"score_{fam}"].to_numpy()) for fam in result.metrics["models"]
    }
    title = "Leakage baseline" + (" (labels permuted: negative control)" if permute_labels else "")
    paths = write_report(out, title, baseline_blocks(metrics, curves, corpus.files, counts), metrics)
    return metrics | {"_report": paths["html"]}


def baseline_blocks(metrics: dict, curves: dict, inputs: list[str], counts: dict) -> list:
    fprs = list(metrics["tpr_at_fpr"])
    v = metrics["verdict"]
    blocks = [
        ("p", f"**Verdict: {v['status']}.** {v['text']}"),
        ("img", "headline_auc.png", forest_png(
            {"chosen by nested CV": (metrics["auc"], *metrics["auc_ci"])}
            | {fam: (m["auc"], *m["auc_ci"]) for fam, m in metrics["models"].items()},
            "Members told from non-members without the model", xlabel="AUC (95% interval)", line=LEAKY_AUC,
            line_label=f"leaky above {LEAKY_AUC:g}", xlim=(0.0, 1.0))),
        ("p", f"Inputs: {', '.join(inputs)}"),
        ("table", ["n", "members", "non-members", "AUC [95% CI]"] + [f"TPR@{float(f):.1%} FPR" for f in fprs] + ["best model"],
         [[metrics["n"], metrics["n_members"], metrics["n_nonmembers"], fmt_auc(metrics)]
          + [fmt_tpr(metrics, f) for f in fprs] + [metrics["best_model"]]]),
        ("p", f"Headline: {metrics['selection']} (outer folds only evaluate). 95% intervals: "
              f"{metrics['auc_ci_method']}." + _repeated_sentence(metrics.get("repeated_texts"))),
        ("h2", "Model families"),
        ("p", "Each family with its hyper-parameters chosen on inner folds, evaluated on the outer folds. "
              "Picking the best row here would be selection on the test folds: the headline does not."),
        ("table", ["model", "AUC [95% CI]"] + [f"TPR@{float(f):.1%}" for f in fprs],
         [[fam, fmt_auc(m)] + [fmt_tpr(m, f) for f in fprs] for fam, m in metrics["models"].items()]),
        ("img", "roc.png", roc_png(curves, loglog=False)),
        ("img", "roc_loglog.png", roc_png(curves, loglog=True)),
        ("h2", "Outer folds"),
        ("table", ["repeat", "fold", "train", "test", "chosen", "inner AUC", "outer AUC", "seconds"],
         [[f["repeat"], f["fold"], f["n_train"], f["n_test"], f["chosen"], fmt(f["chosen_inner_auc"]),
           fmt(f["outer_auc"]), f["seconds"]] for f in metrics["folds"]]),
        ("h2", "What gives the split away"),
        ("p", "Strongest n-gram rules (greedy selection at 5% FPR, fitted on all rows; an explanation, not an evaluation)."),
    ]
    for key, label in (("member", "members"), ("non_member", "non-members")):
        rows = [[r["ngram"], fmt(r["log_odds"]), r["documents"]] for r in metrics["top_ngrams"][key]]
        blocks.append(("table", [f"n-gram pointing to {label}", "log-odds", "documents"], rows or [["(none)", "", ""]]))
    if "top_image_features" in metrics:
        blocks += [("p", "The image features that alone best tell members from non-members (each feature's AUC over "
                         "all rows; an explanation, not an evaluation)."),
                   ("table", ["image feature", "AUC", "members' mean", "non-members' mean"],
                    [[r["feature"], fmt(r["auc"]), fmt(r["member_mean"]), fmt(r["non_member_mean"])]
                     for r in metrics["top_image_features"]] or [["(none)", "", "", ""]])]
    blocks += [
        ("h2", "Data"),
        ("table", ["read", "kept", "quarantined"] + list(counts["quarantined_by_reason"]),
         [[counts["read"], counts["kept"], counts["quarantined"]] + list(counts["quarantined_by_reason"].values())]),
        ("p", TPR_NOTE),
    ]
    return blocks


def _repeated_sentence(twins: dict | None) -> str:
    if not twins or not twins["texts_repeated"]:
        return ""
    return (f" {twins['texts_repeated']} text(s) occur more than once ({twins['in_both_classes']} of them both as a "
            "member and as a non-member): each text's copies were kept in one fold, so no model met in its test fold "
            "a text it was trained on.")
