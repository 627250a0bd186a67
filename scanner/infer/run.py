"""`scanner infer`: was this model trained on this set? A p-value for the set, against a reference
set of the same distribution known to be unseen (dataset inference, scanner.infer.stats).

  1. The blind baseline between suspect and reference (their texts, with the images of image-text
     sets). If these alone tell them apart (its AUC interval lies above 0.55), any difference
     under the model could be that shift: the verdict is "invalid: distribution shift", with the
     n-grams that give it away, and no model is run.
  2. Both sets are scanned (ordinary scan runs, so they resume), and each sample becomes one row
     of features: every classic score, the neighbor aggregates, log length (the tabular
     detector's inputs), and with --detector its member probability.
     With --reference-model (MIMIR's "Ref" attack: a smaller model of the same family, or in
     nightly the previous checkpoint), both sets are also scanned under that model without
     neighbors, and each sample gains every classic score's difference between the two models:
     text that is merely easy is easy under both, text the target was trained on only under it.
  3. The set test: p-value, per-split statistics, effect size; "seen" when p < alpha.
  4. How much of the suspect set was seen: always a lower confidence bound from the held-out
     scores alone (scanner.infer.stats.seen_lower_bound); with --detector also an estimate with
     an interval: the suspect set's flag rate corrected by Rogan-Gladen, with the detector's TPR
     (from its training or calibration) and the FPR measured on the reference set itself
     (scanner.contamination).

  <out>/suspect/, <out>/reference/   the two scan runs (scanner.runfolder)
  <out>/suspect_under_reference_model/, <out>/reference_under_reference_model/   with --reference-model
  <out>/metrics.json, report.md, report.html
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline, verdict
from scanner.config import ScanConfig
from scanner.contamination import OperatingPoint, contaminated_fraction
from scanner.corpus import Columns, read_corpus
from scanner.detector.data import aggregates, available_classic
from scanner.detector.trained import TrainedDetector
from scanner.engine import columns_from_config, require_complete
from scanner.errors import InputError
from scanner.infer.stats import DEFAULT_SPLITS, SetTest, set_test
from scanner.report import fmt, fmt_auc, fmt_fraction, forest_png, two_histograms_png, write_report
from scanner.runfolder import RunFolder
from scanner.scan import run_scan
from scanner.scoring import registry
from scanner.scoring.factory import check_model_path
from scanner.storage import join

SEEN, NOT_SHOWN, INVALID = "seen", "not shown", "invalid: distribution shift"
EXIT = {NOT_SHOWN: 0, SEEN: 1, INVALID: 2}


def shift_check(suspect: list[str], reference: list[str], columns: Columns, seed: int, progress) -> dict:
    """The blind baseline between the two sets' texts, and images of image-text sets (suspect = 1)."""
    sets = []
    data = "image and caption" if columns.image else "text"
    for label, paths in ((1, suspect), (0, reference)):
        samples = read_corpus(paths, replace(columns, label=None), progress=progress).samples
        sets.append(samples.select(pl.format("{}:{}", pl.lit(label), "sample_id").alias("sample_id"), "source", "text",
                                   *(["image"] if columns.image else []), pl.lit(label).alias("label")))
    both = pl.concat(sets)
    progress(f"blind baseline: suspect ({sets[0].height}) against reference ({sets[1].height}), {data} only")
    m = run_baseline(both, seed=seed, n_boot=1000, progress=progress).metrics
    return {"auc": m["auc"], "auc_ci": m["auc_ci"], "best_model": m["best_model"], "verdict": verdict(m["auc_ci"], data),
            "data": data,
            "top_ngrams": m["top_ngrams"], "n_suspect": sets[0].height, "n_reference": sets[1].height}


UNDER_REFERENCE_MODEL = "{}_under_reference_model"


def reference_model_config(cfg: ScanConfig, reference_model: str) -> ScanConfig:
    """The scan of a set under the reference model: its sample-level scores only (no neighbors)."""
    return replace(cfg, model=reference_model, revision=None, adapter=None, neighbors=0, label_col=None,
                   reference_model=None).validate()


def sample_features(run: RunFolder, detector: TrainedDetector | None, under_reference_model: RunFolder | None = None
                    ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """One row per scored sample: the tabular detector's inputs, with a reference model each
    classic score's difference to it, and with a detector its probability."""
    df = run.features()
    X, names = aggregates(df)
    if under_reference_model is not None:
        diff, diff_names = reference_differences(df, under_reference_model.features())
        X, names = np.column_stack([X, diff]), names + diff_names
    flags = None
    if detector is not None:
        # a run whose actors applied the detector (nightly; its identity holds the detector's
        # fingerprint) has its probabilities already
        prob, flags = ((df["member_prob"].to_numpy(), df["flagged"].to_numpy()) if "member_prob" in df.columns
                       else detector.score(df))
        X, names = np.column_stack([X, prob]), names + [f"{detector.name} detector"]
    return X, names, flags


def reference_differences(target: pl.DataFrame, reference: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """target - reference model, per registered score both have, but those that need neighbors
    (the reference model's scan makes none), matched by sample_id."""
    scores = [c for c in available_classic(reference) if c in available_classic(target)
              and "neighbor_losses" not in registry.get(c).needs]
    joined = target.select("sample_id", *scores).join(reference.select("sample_id", *scores), on="sample_id",
                                                       how="left", suffix="_ref", maintain_order="left")
    missing = joined.filter(pl.col(f"{scores[0]}_ref").is_null())["sample_id"]
    if len(missing):
        raise InputError(f"{len(missing)} sample(s) were not scored under the reference model (e.g. {missing[0]}): "
                         "its scan must cover the same files")
    diffs = joined.select([(pl.col(c) - pl.col(f"{c}_ref")).cast(pl.Float64).alias(c) for c in scores])
    return diffs.to_numpy(), [f"{c} minus reference model" for c in scores]


def run_inference(suspect: list[str], reference: list[str], out: str, cfg: ScanConfig, alpha: float = 0.01,
                  splits: int = DEFAULT_SPLITS, seed: int = 0, detector: TrainedDetector | None = None,
                  reference_model: str | None = None, progress: Callable[[str], None] = print) -> dict:
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), not {alpha}")
    if splits < 1:
        raise InputError(f"--splits must be at least 1, not {splits}")
    check_model_path(cfg.model)
    ref_cfg = None
    if reference_model:
        check_model_path(reference_model)
        ref_cfg = reference_model_config(cfg, reference_model)
    if detector is not None:
        detector.check_usable_with(cfg)
    columns = columns_from_config(cfg, labels=False)
    shift = shift_check(suspect, reference, columns, seed, progress)
    progress(f"blind baseline: AUC {shift['auc']:.3f} [{shift['auc_ci'][0]:.3f}, {shift['auc_ci'][1]:.3f}]")
    m = {"task": "infer", "model": cfg.model, "reference_model": reference_model, "suspect": suspect,
         "reference": reference, "alpha": alpha, "blind_baseline": shift, "verdict": INVALID, "p_value": None,
         "seen_fraction": None, "seen_at_least": None}
    if shift["verdict"]["usable_for_mia"]:
        m |= _test(suspect, reference, out, replace(cfg, label_col=None), ref_cfg, alpha, splits, seed, detector,
                   progress)
    m["exit_code"] = EXIT[m["verdict"]]
    write_report(out, "Dataset inference: was the model trained on this set?", _blocks(m), m)
    return m


def _test(suspect, reference, out: str, cfg: ScanConfig, ref_cfg: ScanConfig | None, alpha, splits, seed, detector,
          progress) -> dict:
    for name, paths in (("suspect", suspect), ("reference", reference)):
        progress(f"scanning the {name} set under {cfg.model}")
        require_complete(run_scan(paths, join(out, name), cfg, progress=progress), f"the scan of the {name} set failed")
    under_ref = None
    if ref_cfg is not None:
        under_ref = scan_under_reference_model({"suspect": suspect, "reference": reference}, out, ref_cfg, progress)
    result = compare_runs(RunFolder.existing(join(out, "suspect")), RunFolder.existing(join(out, "reference")), detector, splits,
                          seed, under_ref)
    progress(f"set test over {splits} splits: p = {result.p_value:.3g}, effect size (Cohen's d) "
             f"{result.test.effect_size:.3f}")
    return result.to_dict() | {"verdict": SEEN if result.p_value < alpha else NOT_SHOWN}


def scan_under_reference_model(sets: dict[str, list[str]], folder: str, ref_cfg: ScanConfig, progress
                               ) -> tuple[RunFolder, RunFolder]:
    """The suspect and reference sets (in that order) scanned under the reference model."""
    runs = []
    for name, paths in sets.items():
        progress(f"scanning the {name} set under the reference model {ref_cfg.model}")
        target = join(folder, UNDER_REFERENCE_MODEL.format(name))
        require_complete(run_scan(paths, target, ref_cfg, progress=progress),
                         f"the scan of the {name} set under the reference model failed")
        runs.append(RunFolder.existing(target))
    return tuple(runs)


@dataclass(frozen=True)
class RunComparison:
    """The set test of two scanned runs: what infer reports and nightly composes."""

    test: SetTest
    features: list[str]  # the test's inputs, per sample
    n: dict[str, int]  # samples of each set
    seen_fraction: dict | None  # with a detector (scanner.contamination), else None
    detector: dict | None

    @property
    def p_value(self) -> float:
        return self.test.p_value

    def to_dict(self) -> dict:
        return {"p_value": self.p_value, "test": self.test.to_dict(), "held_out_scores": self.test.held_out,
                "features": self.features, "seen_at_least": self.test.seen_at_least, "n": self.n,
                "seen_fraction": self.seen_fraction, "detector": self.detector}


def compare_runs(suspect: RunFolder, reference: RunFolder, detector: TrainedDetector | None, splits: int,
                 seed: int, under_reference_model: tuple[RunFolder, RunFolder] | None = None) -> RunComparison:
    """The set test on two scanned runs (with their scans under a reference model, if given), and
    with a detector the seen fraction (see the module)."""
    refs = under_reference_model or (None, None)
    (Xs, names, flags_s), (Xr, _, flags_r) = (sample_features(run, detector, ref)
                                              for run, ref in zip((suspect, reference), refs))
    test = set_test(Xs, Xr, seed=seed, splits=splits)
    fraction = None
    if detector is not None:
        op = detector.operating_point
        on_reference = OperatingPoint(tp=op.tp, n_pos=op.n_pos, fp=int(flags_r.sum()), n_neg=len(flags_r))
        fraction = contaminated_fraction(int(flags_s.sum()), len(flags_s), on_reference)
        fraction["operating_point"] = vars(on_reference)
    return RunComparison(test=test, features=names, n={"suspect": len(Xs), "reference": len(Xr)},
                         seen_fraction=fraction, detector=detector and {"folder": detector.folder, "name": detector.name})


def headline(m: dict) -> str:
    b = m["blind_baseline"]
    if m["verdict"] == INVALID:
        return (f"Invalid: the texts alone tell the suspect set from the reference (blind baseline AUC "
                f"{fmt_auc(b)}), so a difference under the model could be that shift; no p-value is evidence here.")
    said = (f"{m['verdict'].capitalize()}: p = {m['p_value']:.3g} (alpha {m['alpha']:g}) that the model scores the suspect "
            f"set as no more familiar than the reference")
    if m["seen_fraction"]:
        said += f"; estimated seen fraction {fmt_fraction(m['seen_fraction'])}"
    elif m["seen_at_least"]:
        said += f"; at least {m['seen_at_least']:.0%} of it was seen (95% lower bound)"
    if b["verdict"]["status"] == "shifted":
        return said + (f". Caution: the texts alone tell the sets apart a little (blind baseline AUC {fmt_auc(b)}), so "
                       "part of the difference may be that shift, not exposure.")
    return said + f". The blind baseline is at chance ({fmt_auc(b)}), so the two sets are comparable."


def headline_png(m: dict) -> bytes:
    """Invalid: the blind baseline's AUC against chance. Else each split's held-out effect size
    (Cohen's d of the learned score, suspect minus reference) against zero."""
    b = m["blind_baseline"]
    if m["verdict"] == INVALID:
        return forest_png({"blind baseline": (b["auc"], *b["auc_ci"])}, "The texts alone tell the sets apart",
                          xlabel=f"AUC, suspect vs reference, {b['data']} only (95% interval)", line=0.5, line_label="chance",
                          xlim=(0.0, 1.0))
    splits = m["test"]["splits"]
    return forest_png({f"split {i + 1}": (s["cohens_d"], *s["cohens_d_ci"]) for i, s in enumerate(splits)},
                      f"Suspect minus reference on held-out halves; combined p = {m['p_value']:.3g}",
                      xlabel="Cohen's d (95% interval); > 0: suspect set more familiar",
                      line=0.0, line_label="no difference", xlim=None)


def _blocks(m: dict) -> list:
    b = m["blind_baseline"]
    against = f", against the reference model {m['reference_model']}" if m.get("reference_model") else ""
    blocks = [("p", f"**{headline(m)}**"), ("img", "headline.png", headline_png(m)),
              ("p", f"Model {m['model']}{against}. Suspect: {', '.join(m['suspect'])}. Reference (known unseen): "
                    f"{', '.join(m['reference'])}."),
              ("h2", f"Are the two sets comparable? (blind baseline, {b['data']} only)"),
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
    blocks.append(("p", f"At least {m['seen_at_least']:.1%} (95% lower confidence bound, median over the splits): "
                        "the suspect set's held-out scores are a mixture of seen texts and texts scored like the "
                        "reference, so the share of them above any threshold, beyond the reference's, bounds the seen "
                        "share from below (with a DKW margin for the sample sizes). It needs no detector, and it says "
                        "nothing about an upper limit."))
    f = m["seen_fraction"]
    if f is None:
        blocks.append(("p", "No estimate with an interval: that needs a detector's TPR on known members; give "
                            "--detector (a `scanner calibrate` or `scanner train` folder)."))
    else:
        op = f["operating_point"]
        blocks.append(("p", f"{f['flagged']} of {f['n']} suspect samples flagged by {m['detector']['name']}; "
                            f"{op['fp']} of {op['n_neg']} reference samples (its FPR here) and {op['tp']} of "
                            f"{op['n_pos']} known members (its TPR) give, by Rogan-Gladen, a seen fraction of "
                            f"{fmt_fraction(f)}."))
    return blocks
