"""`scanner infer`: was this model trained on this set? A p-value for the set, against a reference
set of the same distribution known to be unseen (dataset inference, scanner.infer.stats).

  1. The blind baseline between suspect and reference, text only. If their texts alone tell them
     apart (its AUC interval lies above 0.55), any difference under the model could be that
     shift: the verdict is "invalid: distribution shift", with the n-grams that give it away, and
     no model is run.
  2. Both sets are scanned (ordinary scan runs, so they resume), and each sample becomes one row
     of features: every classic score, the neighbor aggregates, log length (the tabular
     detector's inputs), and with --detector its member probability.
  3. The set test: p-value, per-split statistics, effect size; "seen" when p < alpha.
  4. With --detector, the seen fraction of the suspect set: its flag rate corrected by
     Rogan-Gladen, with the detector's TPR (from its training or calibration) and the FPR
     measured on the reference set itself (scanner.contamination).

  <out>/suspect/, <out>/reference/   the two scan runs (scanner.runfolder)
  <out>/metrics.json, report.md, report.html
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline, verdict
from scanner.config import ScanConfig
from scanner.contamination import OperatingPoint, contaminated_fraction
from scanner.corpus import Columns, read_corpus
from scanner.detector.data import aggregates
from scanner.detector.trained import TrainedDetector
from scanner.engine import require_complete
from scanner.errors import InputError
from scanner.infer.stats import DEFAULT_SPLITS, set_test
from scanner.report import fmt, fmt_auc, fmt_fraction, two_histograms_png, write_report
from scanner.runfolder import RunFolder
from scanner.scan import run_scan
from scanner.scoring.factory import check_model_path

SEEN, NOT_SHOWN, INVALID = "seen", "not shown", "invalid: distribution shift"
EXIT = {NOT_SHOWN: 0, SEEN: 1, INVALID: 2}


def shift_check(suspect: list[str], reference: list[str], columns: Columns, seed: int, progress) -> dict:
    """The blind baseline between the two sets' texts (suspect = 1)."""
    sets = []
    for label, paths in ((1, suspect), (0, reference)):
        samples = read_corpus(paths, replace(columns, label=None), progress=progress).samples
        sets.append(samples.select(pl.format("{}:{}", pl.lit(label), "sample_id").alias("sample_id"), "source", "text",
                                   pl.lit(label).alias("label")))
    both = pl.concat(sets)
    progress(f"blind baseline: suspect ({sets[0].height}) against reference ({sets[1].height}), text only")
    m = run_baseline(both, seed=seed, n_boot=1000, progress=progress).metrics
    return {"auc": m["auc"], "auc_ci": m["auc_ci"], "best_model": m["best_model"], "verdict": verdict(m["auc_ci"]),
            "top_ngrams": m["top_ngrams"], "n_suspect": sets[0].height, "n_reference": sets[1].height}


def sample_features(run: RunFolder, detector: TrainedDetector | None) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """One row per scored sample: the tabular detector's inputs, and the detector's probability."""
    df = run.features()
    X, names = aggregates(df)
    flags = None
    if detector is not None:
        # a run whose actors applied the detector (nightly; its identity holds the detector's
        # fingerprint) has its probabilities already
        prob, flags = ((df["member_prob"].to_numpy(), df["flagged"].to_numpy()) if "member_prob" in df.columns
                       else detector.score(df))
        X, names = np.column_stack([X, prob]), names + [f"{detector.name} detector"]
    return X, names, flags


def run_inference(suspect: list[str], reference: list[str], out: str, cfg: ScanConfig, alpha: float = 0.01,
                  splits: int = DEFAULT_SPLITS, seed: int = 0, detector: TrainedDetector | None = None,
                  progress: Callable[[str], None] = print) -> dict:
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), not {alpha}")
    if splits < 1:
        raise InputError(f"--splits must be at least 1, not {splits}")
    check_model_path(cfg.model)
    if detector is not None:
        detector.check_usable_with(cfg)
    out_ = Path(out)
    columns = Columns(text=cfg.text_col, label=None, id=cfg.id_col, source=cfg.source_col)
    shift = shift_check(suspect, reference, columns, seed, progress)
    progress(f"blind baseline: AUC {shift['auc']:.3f} [{shift['auc_ci'][0]:.3f}, {shift['auc_ci'][1]:.3f}]")
    m = {"task": "infer", "model": cfg.model, "suspect": suspect, "reference": reference, "alpha": alpha,
         "blind_baseline": shift, "verdict": INVALID, "p_value": None, "seen_fraction": None}
    if shift["verdict"]["usable_for_mia"]:
        m |= _test(suspect, reference, out_, replace(cfg, label_col=None), alpha, splits, seed, detector, progress)
    m["exit_code"] = EXIT[m["verdict"]]
    write_report(out_, "Dataset inference: was the model trained on this set?", _blocks(m), m)
    return m


def _test(suspect, reference, out: Path, cfg: ScanConfig, alpha, splits, seed, detector, progress) -> dict:
    for name, paths in (("suspect", suspect), ("reference", reference)):
        progress(f"scanning the {name} set under {cfg.model}")
        require_complete(run_scan(paths, out / name, cfg, progress=progress), f"the scan of the {name} set failed")
    result = compare_runs(RunFolder.existing(out / "suspect"), RunFolder.existing(out / "reference"), detector, splits,
                       seed)
    progress(f"set test over {splits} splits: p = {result['p_value']:.3g}, effect size (Cohen's d) "
             f"{result['test']['effect_size']:.3f}")
    return result | {"verdict": SEEN if result["p_value"] < alpha else NOT_SHOWN}


def compare_runs(suspect: RunFolder, reference: RunFolder, detector: TrainedDetector | None, splits: int,
              seed: int) -> dict:
    """The set test on two scanned runs, and with a detector the seen fraction (see the module)."""
    (Xs, names, flags_s), (Xr, _, flags_r) = (sample_features(run, detector) for run in (suspect, reference))
    test = set_test(Xs, Xr, seed=seed, splits=splits)
    fraction = None
    if detector is not None:
        op = detector.operating_point
        on_reference = OperatingPoint(tp=op.tp, n_pos=op.n_pos, fp=int(flags_r.sum()), n_neg=len(flags_r))
        fraction = contaminated_fraction(int(flags_s.sum()), len(flags_s), on_reference, seed=seed)
        fraction["operating_point"] = vars(on_reference)
    return {"p_value": test.p_value, "test": test.to_dict(), "held_out_scores": test.held_out, "features": names,
            "n": {"suspect": len(Xs), "reference": len(Xr)}, "seen_fraction": fraction,
            "detector": detector and {"folder": str(detector.folder), "name": detector.name}}


def headline(m: dict) -> str:
    b = m["blind_baseline"]
    if m["verdict"] == INVALID:
        return (f"Invalid: the texts alone tell the suspect set from the reference (blind baseline AUC "
                f"{fmt_auc(b)}), so a difference under the model could be that shift; no p-value is evidence here.")
    said = (f"{m['verdict'].capitalize()}: p = {m['p_value']:.3g} (alpha {m['alpha']:g}) that the model scores the suspect "
            f"set as no more familiar than the reference")
    if m["seen_fraction"]:
        said += f"; estimated seen fraction {fmt_fraction(m['seen_fraction'])}"
    return said + f". The blind baseline is at chance ({fmt_auc(b)}), so the two sets are comparable."


def _blocks(m: dict) -> list:
    b = m["blind_baseline"]
    blocks = [("p", f"**{headline(m)}**"),
              ("p", f"Model {m['model']}. Suspect: {', '.join(m['suspect'])}. Reference (known unseen): "
                    f"{', '.join(m['reference'])}."),
              ("h2", "Are the two sets comparable? (blind baseline, text only)"),
              ("p", f"{b['n_suspect']} suspect and {b['n_reference']} reference texts; AUC {fmt_auc(b)}, "
                    f"best model {b['best_model']}. {b['verdict']['text']}")]
    if m["verdict"] == INVALID:
        for key, label in (("member", "the suspect set"), ("non_member", "the reference")):
            blocks.append(("table", [f"n-gram pointing to {label}", "log-odds", "documents"],
                           [[r["ngram"], fmt(r["log_odds"]), r["documents"]] for r in b["top_ngrams"][key]]
                           or [["(none)", "", ""]]))
        return blocks
    t = m["test"]
    blocks += [("h2", "The set test"),
               ("p", f"{m['n']['suspect']} suspect and {m['n']['reference']} reference samples, {len(t['splits'])} random "
                     f"splits into halves: a logistic regression over {len(m['features'])} features per sample learns "
                     "suspect against reference on the first halves, and a one-sided Welch t-test compares its scores "
                     f"of the second halves; the p-values are combined by the Cauchy combination (valid for dependent "
                     f"splits). Combined p = {m['p_value']:.3g}; median effect size (Cohen's d) {fmt(t['effect_size'])}."),
               ("table", ["split", "t", "p", "mean difference", "Cohen's d", "held-out suspect", "held-out reference"],
                [[i + 1, fmt(s["t"]), f"{s['p']:.3g}", fmt(s["mean_difference"]), fmt(s["cohens_d"]), s["n_suspect"],
                  s["n_reference"]] for i, s in enumerate(t["splits"])]),
               ("img", "held_out_scores.png", two_histograms_png(
                   {"suspect": m["held_out_scores"]["suspect"], "reference": m["held_out_scores"]["reference"]},
                   "combined score of the held-out halves (first split)"))]
    blocks.append(("h2", "How much of the suspect set was seen?"))
    f = m["seen_fraction"]
    if f is None:
        blocks.append(("p", "Not estimated: a fraction needs a detector's TPR on known members; give --detector (a "
                            "`scanner calibrate` or `scanner train` folder)."))
    else:
        op = f["operating_point"]
        blocks.append(("p", f"{f['flagged']} of {f['n']} suspect samples flagged by {m['detector']['name']}; "
                            f"{op['fp']} of {op['n_neg']} reference samples (its FPR here) and {op['tp']} of "
                            f"{op['n_pos']} known members (its TPR) give, by Rogan-Gladen, a seen fraction of "
                            f"{fmt_fraction(f)}."))
    return blocks
