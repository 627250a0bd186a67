"""`scanner evaluate`: every MIA score next to the blind baseline, on the same samples.

Scores: every registered one (scanner.scoring.registry: LOSS, zlib, Min-K%, Min-K%++,
neighborhood and any added; sign-corrected so higher = member), the FiMMIA and tabular detectors (when a detector folder is given: only the samples held
out from their training, when it was trained on this run), and the model-free leakage baseline (out-of-fold scores of nested CV
over all labelled texts, computed by `scanner train` in the same central task, or here when
there is no model folder for this run; restricted to the same samples). The seed paper's standard decides the
headline: an MIA result counts only if it beats the blind baseline on the same split.

With an overlap result of the same items against the model's training corpus (`scanner overlap`),
the data evidence stands beside the model evidence: per item its coverage by the corpus's
n-grams, and each score's AUC against "the whole item occurs in the corpus" next to its AUC
against the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from scanner.baseline.run import summarize_by_fold, verdict
from scanner.detector.data import available_classic, blind_baseline, labelled_features, member_score
from scanner.detector.folder import DetectorFolder
from scanner.detector.mlp import MLPDetector
from scanner.errors import InputError
from scanner.metrics import min_negatives_for, roc_auc, summarize
from scanner.report import TPR_NOTE, fmt, fmt_auc, fmt_tpr, roc_png, write_report
from scanner.runfolder import RunFolder
from scanner.scoring import registry
from scanner.storage import Store

BASELINE = "blind baseline"
LENGTH_BUCKETS = (64, 128, 256)  # tokens


def paired_auc_difference(y, a, b, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) on the same samples, with a stratified paired bootstrap CI."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    diffs = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        diffs.append(roc_auc(y[idx], a[idx]) - roc_auc(y[idx], b[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"difference": roc_auc(y, a) - roc_auc(y, b), "ci": [float(lo), float(hi)]}


def against_baseline(y, mia: np.ndarray, baseline: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """The best MIA score's AUC minus the reference it must beat: the blind baseline's, or chance
    (0.5) when the baseline is below it. A baseline under 0.5 explains no part of an MIA's AUC
    (it is the cross-validation's scatter around chance), and subtracting it would inflate the
    difference."""
    below = roc_auc(y, baseline) < 0.5
    diff = paired_auc_difference(y, mia, np.zeros(len(y)) if below else baseline, n_boot=n_boot, seed=seed)
    return diff | {"reference": "chance (the blind baseline is below 0.5)" if below else "blind baseline"}


def length_bucket_names() -> list[str]:
    """The length buckets, shortest first."""
    edges = (0,) + LENGTH_BUCKETS + (10**9,)
    return [f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}" for lo, hi in zip(edges[:-1], edges[1:])]


def _length_bucket(n: np.ndarray) -> list[str]:
    names = length_bucket_names()
    return [names[int(np.searchsorted(LENGTH_BUCKETS, x, side="right"))] for x in n]


def score_family(name: str) -> str | None:
    """Scores with many variants, of which plots show only the best (the registry's family)."""
    return registry.family(name)


def headline_scores(metrics: dict) -> list[str]:
    """What the ROC plot and the histograms show: the best score of each family (Min-K%,
    Min-K%++), the other classic scores, every detector, the blind baseline."""
    best = {}
    for name in metrics:
        family = score_family(name)
        if family and (family not in best or metrics[name]["auc"] > metrics[best[family]]["auc"]):
            best[family] = name
    return [n for n in metrics if score_family(n) is None or best[score_family(n)] == n]


def _breakdown(y, scores: dict, by: list[str], order: list[str] | None = None) -> list[dict]:
    rows = []
    for group in [g for g in order if g in set(by)] if order else sorted(set(by)):
        mask = np.array([g == group for g in by])
        row = {"group": group, "n": int(mask.sum()), "members": int(y[mask].sum())}
        for name, s in scores.items():
            both = 0 < y[mask].sum() < mask.sum()
            row[name] = roc_auc(y[mask], s[mask]) if both else None
        rows.append(row)
    return rows


def _histograms_png(y, scores: dict) -> bytes:
    import io

    import matplotlib.pyplot as plt

    n = len(scores)
    cols = 3 if n > 4 else 2
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.4 * rows), squeeze=False)
    for ax, (name, s) in zip(np.ravel(axes), scores.items()):
        bins = np.histogram_bin_edges(s, bins=30)
        ax.hist(s[y == 0], bins=bins, alpha=0.6, label="non-members")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, label="members")
        ax.set_title(name, fontsize=12)
    for ax in np.ravel(axes)[n:]:
        ax.axis("off")
    np.ravel(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def by_neighbor_kind(dt: pl.DataFrame, y: np.ndarray, n_boot: int, seed: int) -> list[dict]:
    """Each neighbor kind's own neighborhood score: a sample's mean loss change over its neighbors
    of that kind (higher = member), so a kind that training never used (colour or case inversion)
    can be compared with the mild ones."""
    if dt.height == 0 or dt["nb_kinds"].list.len().max() == 0:
        return []
    per = (dt.select(pl.int_range(pl.len()).alias("i"), "nb_kinds", "nb_dL").explode("nb_kinds", "nb_dL")
           .group_by("i", "nb_kinds").agg(pl.col("nb_dL").mean().alias("dL"), pl.len().alias("k")))
    rows = []
    for kind in dict.fromkeys(dt["nb_kinds"][0]):  # in the scan's neighbor order
        of_kind = per.filter(pl.col("nb_kinds") == kind).sort("i")
        if of_kind.height != dt.height:  # a kind some samples lack cannot be compared on the same samples
            continue
        s = summarize(y, of_kind["dL"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({"kind": kind, "neighbors_per_sample": int(of_kind["k"].max()), "auc": s["auc"],
                     "auc_ci": s["auc_ci"]})
    return rows


@dataclass
class Evaluation:
    """What `evaluate` computes; the report is rendered from it (write_evaluation_report)."""

    metrics: dict  # what metrics.json holds
    labels: np.ndarray  # of the evaluated samples
    scores: dict[str, np.ndarray]  # member scores per name, higher = member, the blind baseline's last

    @property
    def headline(self) -> "Headline":
        m = self.metrics
        baseline = m["scores"][BASELINE]
        return Headline(baseline_auc=baseline["auc"], baseline_auc_ci=baseline["auc_ci"],
                        baseline_verdict=m["baseline_verdict"]["status"], best_mia=m["best_mia"],
                        best_mia_auc=m["scores"][m["best_mia"]]["auc"], mia_beats_baseline=m["mia_beats_baseline"],
                        conclusion=m["conclusion"])


@dataclass(frozen=True)
class Headline:
    """What a command that runs an evaluation shows of it (nightly, per labelled eval set)."""

    baseline_auc: float
    baseline_auc_ci: list[float]
    baseline_verdict: str  # usable / leaky / ...
    best_mia: str
    best_mia_auc: float
    mia_beats_baseline: bool
    conclusion: str


def _held_out(df: pl.DataFrame, run: RunFolder, detectors: DetectorFolder | None) -> tuple[np.ndarray, str, bool]:
    """(mask of the samples to evaluate, what they are, whether the detectors were trained on
    this very run). Runs are matched by run_id: the same run mounted elsewhere is still the same."""
    if detectors is None:
        return np.ones(df.height, bool), "all labelled samples (no detector)", False
    split = detectors.split
    if split.get("run_id") != run.run_id:
        return np.ones(df.height, bool), "all labelled samples (the detectors were trained on another run)", False
    test_ids = set(split["test_ids"])
    mask = np.array([s in test_ids for s in df["sample_id"]])
    return mask, f"the {len(test_ids)} test samples held out from detector training", True


def overlap_items(overlap_dir) -> pl.DataFrame:
    """A `scanner overlap` result's per-item table (read before any work: a wrong folder fails at once)."""
    store = Store(str(overlap_dir), create=False)
    if not store.exists("items.parquet"):
        raise InputError(f"{overlap_dir}: no items.parquet; run `scanner overlap` into it first")
    return pl.from_arrow(store.read_parquet("items.parquet")).select("sample_id", "coverage", "longest_span", "n_docs", "doc_ids")


def overlap_evidence(dt: pl.DataFrame, y: np.ndarray, scores: dict, items: pl.DataFrame, overlap_dir) -> dict:
    """Each evaluated sample's overlap with the corpus, and every score's AUC against "the
    whole item occurs in the corpus" (coverage 1) beside its AUC against the labels."""
    joined = dt.select("sample_id").join(items, on="sample_id", how="left", maintain_order="left")
    missing = joined.filter(pl.col("coverage").is_null())["sample_id"]
    if len(missing):
        raise InputError(f"{overlap_dir}: {len(missing)} of {dt.height} evaluated samples are not among its items "
                         f"(e.g. {missing[0]}): run `scanner overlap` on the same eval files")
    whole = (joined["coverage"] >= 1.0).to_numpy()
    aucs = {name: {"vs_labels": roc_auc(y, sc), "vs_whole_in_corpus": roc_auc(whole.astype(int), sc)
                   if 0 < whole.sum() < len(whole) else None} for name, sc in scores.items()}
    rows = joined.with_columns(label=pl.Series(y)).filter(pl.col("coverage") > 0).sort("coverage", descending=True)
    return {"dir": str(overlap_dir), "n": int(len(y)), "whole_in_corpus": int(whole.sum()),
            "any_overlap": int((joined["coverage"] > 0).sum()),
            "members_whole": int((whole & (y == 1)).sum()), "non_members_with_overlap": rows.filter(
                pl.col("label") == 0).to_dicts(), "auc": aucs,
            "items_with_overlap": rows.head(50).to_dicts()}


def evaluate(run_dir, detector_dir=None, seed: int = 0, n_boot: int = 1000, overlap_dir=None,
             progress: Callable[[str], None] = lambda m: None) -> Evaluation:
    run = RunFolder.existing(run_dir)
    items = overlap_items(overlap_dir) if overlap_dir else None
    df = labelled_features(run)
    detector_folder = DetectorFolder.existing(detector_dir) if detector_dir is not None else None
    test, held_out, same_run = _held_out(df, run, detector_folder)
    detectors = {k: MLPDetector.from_state(*detector_folder.detector_state(k)) for k in detector_folder.kinds()} \
        if detector_folder else {}

    base = None
    saved = detector_folder.baseline_scores() if same_run else None
    if saved is not None:  # from `scanner train`, over the same samples
        joined = df.select("sample_id").join(saved, on="sample_id", how="left", maintain_order="left")
        base = None if joined["score"].null_count() else joined
    if base is None:
        progress("blind baseline on the same texts (nested CV)")
        base = blind_baseline(df, seed, progress=progress).scores
    base_scores = base["score"].to_numpy()
    # each sample's outer fold: the baseline's interval then covers the cross-validation's own variance
    base_fold = base["fold"].to_numpy() if "fold" in base.columns else None

    dt = df.filter(pl.Series(test))
    y = dt["label"].to_numpy().astype(int)
    scores = {name: member_score(dt, name) for name in available_classic(dt)}
    inputs = dt
    if detector_folder:  # the detectors take the scores they were trained on; the run may hold more
        pinned = set(detector_folder.scan_config["scores"])
        inputs = dt.drop([c for c in available_classic(dt) if c not in pinned])
    for kind, det in detectors.items():
        scores[f"{kind} detector"] = det.predict_proba(inputs)
    mia_names = list(scores)
    scores[BASELINE] = base_scores[test]

    progress(f"metrics on {held_out}")
    metrics = {name: summarize_by_fold(y, s, base_fold[test], n_boot, seed) if name == BASELINE and base_fold is not None
               else summarize(y, s, n_boot=n_boot, seed=seed) for name, s in scores.items()}
    best_mia = max(mia_names, key=lambda n: metrics[n]["auc"])
    diff = against_baseline(y, scores[best_mia], scores[BASELINE], n_boot=n_boot, seed=seed)
    beats = diff["ci"][0] > 0
    vs = (f"baseline {metrics[BASELINE]['auc']:.3f}" if diff["reference"] == "blind baseline" else
          f"chance, since the blind baseline ({metrics[BASELINE]['auc']:.3f}) is below it")
    if beats:
        conclusion = (f"The MIA signal exceeds the blind baseline: {best_mia} AUC {metrics[best_mia]['auc']:.3f} vs "
                      f"{vs} (difference {diff['difference']:+.3f}, 95% CI "
                      f"[{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]): evidence of membership beyond distribution shift.")
    else:
        conclusion = (f"The MIA numbers are NOT evidence of membership: the best MIA score ({best_mia}, AUC "
                      f"{metrics[best_mia]['auc']:.3f}) does not beat {vs} (difference {diff['difference']:+.3f}, "
                      f"95% CI [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}]).")
    conclusion += (f" The best MIA score is picked among {len(mia_names)} on these same samples, which favours "
                   f"the MIA side.")
    thresholds = {}
    for kind, det in detectors.items():
        flag = scores[f"{kind} detector"] > det.threshold
        n_calib = det.info.get("calibration_nonmembers", 0)
        thresholds[kind] = {"threshold": det.threshold, "target_fpr": det.target_fpr,
                            "observed_fpr": float(flag[y == 0].mean()), "observed_tpr": float(flag[y == 1].mean()),
                            "calibration_nonmembers": n_calib,
                            # below 10/FPR calibration non-members the threshold rests on a handful of them
                            "reliable": n_calib >= min_negatives_for(det.target_fpr)}
    headline = {best_mia: scores[best_mia], BASELINE: scores[BASELINE]}
    result = {
        "task": "evaluate",
        "evaluated_on": held_out,
        "n": int(len(y)), "n_members": int(y.sum()),
        "scores": metrics,
        "best_mia": best_mia,
        "mia_beats_baseline": beats,
        "best_mia_minus_baseline": diff,
        "baseline_verdict": verdict(metrics[BASELINE]["auc_ci"], "image and caption" if "image" in df.columns else "text"),
        "by_neighbor_kind": by_neighbor_kind(dt, y, n_boot, seed),
        "conclusion": conclusion,
        "thresholds": thresholds,
        "by_source": _breakdown(y, headline, dt["source"].to_list()),
        "by_length": _breakdown(y, headline, _length_bucket(dt["n_tokens"].to_numpy()), length_bucket_names()),
        "run_id": run.run_id,
        "run_dir": run.uri,
        "detector_dir": str(detector_dir) if detector_dir else None,
        "overlap": overlap_evidence(dt, y, scores, items, overlap_dir) if overlap_dir else None,
        "prefixes": run.manifest.get("prefixes") if run.store.exists("manifest.json") else None,
    }
    return Evaluation(metrics=result, labels=y, scores=scores)


def write_evaluation_report(ev: Evaluation, out) -> dict[str, str]:
    return write_report(out, "Membership inference vs the blind baseline",
                        _blocks(ev.metrics, ev.labels, ev.scores), ev.metrics)


def roc_curves(m: dict, y, scores: dict) -> dict[str, tuple]:
    """The ROC plot's curves: the best MIA score first (drawn thicker), the best of each other
    family and the detectors, the blind baseline last."""
    shown = headline_scores(m["scores"])
    order = [m["best_mia"]] + [n for n in shown if n not in (m["best_mia"], BASELINE)] + [BASELINE]
    return {name: (y, scores[name]) for name in order}


def _blocks(m: dict, y, scores: dict) -> list:
    fprs = list(next(iter(m["scores"].values()))["tpr_at_fpr"])
    table = [[name, fmt_auc(s)] + [fmt_tpr(s, f) for f in fprs] for name, s in m["scores"].items()]
    bd_names = [m["best_mia"], BASELINE]
    shown = headline_scores(m["scores"])
    d = m["best_mia_minus_baseline"]
    headline_plot = roc_png({m["best_mia"]: (y, scores[m["best_mia"]]), BASELINE: (y, scores[BASELINE])}, loglog=False,
                            title=f"{m['best_mia']} minus {'blind baseline' if d['reference'] == 'blind baseline' else 'chance'}: "
                                  f"AUC {d['difference']:+.3f} "
                                  f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", size=(5, 4.2))
    curves = roc_curves(m, y, scores)
    blocks = [
        ("p", f"**{m['conclusion']}**"),
        ("img", "headline_roc.png", headline_plot),
        ("p", f"Blind baseline verdict on this split: {m['baseline_verdict']['status']}. {m['baseline_verdict']['text']}"),
        ("p", f"Evaluated on {m['evaluated_on']}: n = {m['n']}, members = {m['n_members']}."),
        ("h2", "ROC: the best of each score family, the detectors and the blind baseline"),
        ("img", "roc_loglog.png", roc_png(curves, loglog=True)),
        ("img", "roc.png", roc_png(curves, loglog=False)),
        ("h2", "Score distributions by label"),
        ("img", "histograms.png", _histograms_png(y, {name: scores[name] for name in shown})),
    ]
    others = {n: s for n, s in scores.items() if n not in shown}
    if others:
        blocks.append(("details", f"The other {len(others)} scores' distributions",
                       [("img", "histograms_others.png", _histograms_png(y, others))]))
    blocks += [
        ("h2", "Every score (AUC with 95% CI, TPR at low FPR)"),
        ("table", ["score", "AUC [95% CI]"] + [f"TPR@{float(f):.1%}" for f in fprs], table),
    ]
    if m["by_neighbor_kind"]:
        blocks += [("h2", "Neighborhood score by neighbor kind"),
                   ("p", "Each kind's own score: a sample's mean loss change over its neighbors of that kind. Kinds "
                         "that training data rarely show (colour inversion of an image, case inversion of a text) "
                         "often separate members best."),
                   ("table", ["neighbor kind", "neighbors per sample", "AUC [95% CI]"],
                    [[r["kind"], r["neighbors_per_sample"], fmt_auc(r)] for r in m["by_neighbor_kind"]])]
    if m["thresholds"]:
        blocks += [("h2", "Calibrated thresholds (on held-out non-members)"),
                   ("table", ["detector", "threshold", "target FPR", "observed FPR", "observed TPR",
                              "calibration non-members", "reliable (>= 10/FPR)"],
                    [[k, fmt(t["threshold"]), fmt(t["target_fpr"]), fmt(t["observed_fpr"]), fmt(t["observed_tpr"]),
                      t["calibration_nonmembers"], t["reliable"]] for k, t in m["thresholds"].items()])]
    for title, key in (("By source", "by_source"), ("By length (tokens)", "by_length")):
        blocks += [("h2", f"{title}: AUC"),
                   ("table", ["group", "n", "members"] + bd_names,
                    [[r["group"], r["n"], r["members"]] + [fmt(r[n]) if r[n] is not None else "n/a" for n in bd_names]
                     for r in m[key]])]
    if m.get("overlap"):
        blocks += _overlap_blocks(m["overlap"])
    if p := m.get("prefixes"):
        files = ", ".join(f"{k} {v}" for k, v in p.items() if k.endswith("_prefix") and v)
        blocks.append(("p", f"ReCaLL / Con-ReCall prefixes ({files}): {p['warning']}."))
    negated = [s.name for s in registry.scores() if not s.higher_is_member]
    blocks.append(("p", f"Scores are oriented so that higher = member ({', '.join(negated)} are negated). " + TPR_NOTE))
    return blocks


def _overlap_blocks(o: dict) -> list:
    def auc(x):
        return "n/a" if x is None else f"{x:.3f}"

    return [("h2", "Data evidence beside model evidence (exact n-gram overlap with the corpus)"),
            ("p", f"Overlap result {o['dir']}: of {o['n']} evaluated items, {o['whole_in_corpus']} occur whole in the "
                  f"corpus (every n-gram found) and {o['any_overlap']} share at least one n-gram; "
                  f"{o['members_whole']} of them are members. Each score's AUC against that data-side truth stands "
                  "beside its AUC against the labels (n/a: everything or nothing occurs whole)."),
            ("table", ["score", "AUC vs labels", "AUC vs whole item in corpus"],
             [[name, auc(a["vs_labels"]), auc(a["vs_whole_in_corpus"])] for name, a in o["auc"].items()]),
            ("table", ["non-member with overlap", "coverage", "longest span (words)", "documents", "e.g."],
             [[r["sample_id"], fmt(r["coverage"]), r["longest_span"], r["n_docs"], ", ".join(r["doc_ids"])]
              for r in o["non_members_with_overlap"][:30]] or [["(none)", "", "", "", ""]])]
