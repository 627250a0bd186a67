"""`scanner calibrate` as a library call: split -> blind baseline -> fine-tune -> scan -> train
-> measure per exposure group -> report. Every step resumes: the split is a function of the ids
and the seed, the baseline is kept per split, the fine-tune continues from its checkpoint, the
scan is an ordinary run folder.

  <out>/set.parquet       sample_id, text, source, label (1 = member), exposure (0 = non-member)
  <out>/baseline.json     the blind baseline on that split (text only), keyed by the split's hash,
  <out>/baseline_scores.parquet  and its out-of-fold scores (the detector folder takes them)
  <out>/finetune/         scanner.calibrate.finetune
  <out>/scan/             the scan of the set under the tuned copy (scanner.runfolder)
  <out>/detector/         a `scanner train` folder, its scan settings those of the ORIGINAL model,
                          plus calibration.json: how its operating point was measured, and
                          never_seen.parquet: its test texts, which the original model never saw
  <out>/original/         those texts scanned under the original model: does the operating point
                          transfer to it (scanner.transfer)?
  <out>/metrics.json, report.md, report.html
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import polars as pl

from scanner.baseline.run import run_baseline, verdict
from scanner.calibrate.finetune import FinetuneSpec, finetune_on_ray
from scanner.calibrate.split import calibration_split, training_stream
from scanner.config import ScanConfig
from scanner.corpus import Columns, read_corpus
from scanner.detector.data import available_classic, member_score
from scanner.detector.folder import KINDS, DetectorFolder
from scanner.detector.mlp import MLPDetector
from scanner.engine import require_complete
from scanner.errors import InputError
from scanner.evaluate import BASELINE
from scanner.metrics import summarize
from scanner.report import TPR_NOTE, fmt, fmt_auc, fmt_tpr, forest_png, line_png, write_report
from scanner.lock import FolderLock
from scanner.runfolder import RunFolder, check_identity, save_identity
from scanner.scan import run_scan
from scanner.scoring import registry
from scanner.scoring.factory import check_adapter_servable, check_model_path
from scanner.scoring.options import BACKENDS
from scanner.storage import Store, absolute
from scanner.train import train_on_ray
from scanner.transfer import SHIFT_TOLERANCE, measure_transfers, score_shifts

CROSS_FIT_FOLDS = 5
BASELINE_SCORES = "baseline_scores.parquet"
SCAN_SHARD_ROWS = 100
EVALUATED_ON = (f"every sample of the set: the detectors' scores cross-fitted ({CROSS_FIT_FOLDS} folds, each sample "
                "scored by detectors that never saw it), the blind baseline's out of fold")
CAVEAT = ("The operating point was measured on members that a fine-tune of this model saw a known number of times. "
          "That approximates, but is not, pretraining exposure, and the TPR on pretraining members can be lower or "
          "higher than measured here: on the tests' tiny GPT-2 (its members seen 25 times in pretraining) the pooled "
          "TPR of a calibration with exposures 1/4/16 was 0.53 while 0.92 of its pretraining members were flagged "
          "(a pooled estimate too high: 0.92 for a true 0.5), and after 25 exposures at a lower learning rate 0.73 "
          "against 0.37 (too low: 0.29). So sweeps and nightly checks also give the estimate under each exposure "
          "group's TPR and the range over them, which held the truth in the first case. The FPR is measured again "
          "under the model a sweep scores (below).")
TRANSFER_NOTE = ("Sweeps and nightly checks apply the detector to the original model, not to the tuned copy. The "
                 "detectors' test texts (members and non-members: the original model saw neither) were scored under "
                 "the original model. A sweep of that model uses the FPR measured there; the shift AUC tells those "
                 "scores from the non-members' under the tuned copy (0.5: the fine-tune left the scores of unseen "
                 f"text where they were). Beyond 0.5 ± {SHIFT_TOLERANCE} a sweep stops: the copy's TPR would say "
                 "little about the original model. The same shift per classic score shows which inputs carry over.")


def _baseline(split: pl.DataFrame, out: Store, seed: int, progress) -> dict:
    """The blind baseline on the split, computed once per split; its out-of-fold scores are kept
    for the detector folder, so that training does not compute it again."""
    key = hashlib.sha256(json.dumps([split["sample_id"].to_list(), split["label"].to_list(), seed]).encode()).hexdigest()
    done = out.read_json("baseline.json") if out.exists("baseline.json") and out.exists(BASELINE_SCORES) else {}
    if done.get("split_hash") == key:
        return done
    progress(f"blind baseline on the random split ({split.height} texts, nested CV, text only)")
    b = run_baseline(split.select("sample_id", "label", "source", "text"), seed=seed, n_boot=1000, progress=progress)
    out.write_parquet(BASELINE_SCORES, b.scores.select("sample_id", "score").to_arrow())
    m = b.metrics
    result = {"split_hash": key, "auc": m["auc"], "auc_ci": m["auc_ci"], "best_model": m["best_model"],
              "verdict": verdict(m["auc_ci"])}
    out.write_json("baseline.json", result)  # last: marks the baseline complete
    return result


def _scan_config(cfg: ScanConfig, spec: FinetuneSpec, tuned: str) -> ScanConfig:
    """The tuned copy: base + adapter (LoRA) or the saved checkpoint (full); the set's columns;
    small shards, so that a scan of a few hundred texts under a big model shows progress and
    resumes after a kill without redoing most of it."""
    columns = dict(text_col="text", label_col="label", id_col="sample_id", source_col="source",
                   shard_size=min(cfg.shard_size, SCAN_SHARD_ROWS))
    if spec.method == "lora":
        return replace(cfg, adapter=tuned, **columns)
    return replace(cfg, model=tuned, revision=None, adapter=None, **columns)


def all_scores(scan: str, detectors: DetectorFolder, split: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Every sample of the set with its exposure, and every member score (higher = member) of
    every sample: the classic ones, both detectors cross-fitted, the blind baseline out of fold."""
    df = RunFolder.existing(scan).features().join(split.select("sample_id", "exposure"), on="sample_id")
    df = df.join(detectors.crossfit_scores(), on="sample_id").join(
        detectors.baseline_scores().rename({"score": "_baseline"}), on="sample_id")
    if df.height != split.height:
        raise InputError(f"{scan}: {df.height} of the {split.height} samples of the set have every score")
    scores = {name: member_score(df, name) for name in available_classic(df)}
    scores |= {f"{kind} detector": df[kind].to_numpy() for kind in KINDS}
    scores[BASELINE] = df["_baseline"].to_numpy()
    return df.select("sample_id", "label", "exposure"), scores


def by_exposure(samples: pl.DataFrame, scores: dict, epochs: int, n_boot: int, seed: int) -> dict:
    """Every score per exposure group (its members against all non-members, named by the times
    its members were seen in all epochs) and overall."""
    exposure = samples["exposure"].to_numpy()
    y = samples["label"].to_numpy().astype(int)
    groups = {"overall": np.ones(len(y), bool)}
    for e in sorted(set(exposure[exposure > 0].tolist())):
        groups[f"seen {e * epochs}x"] = (exposure == e) | (exposure == 0)
    return {group: {name: summarize(y[m], s[m], n_boot=n_boot, seed=seed) for name, s in scores.items()}
            for group, m in groups.items()}


def _split(heldout: list[str], columns: Columns, members_fraction: float, exposures: list[int], seed: int,
           progress) -> tuple[pl.DataFrame, dict]:
    corpus = read_corpus(heldout, replace(columns, label=None), progress=progress)
    split, repeated = calibration_split(corpus.samples, members_fraction, exposures, seed)
    counts = {"read": corpus.counts["read"], "quarantined": corpus.counts["quarantined"], "repeated_texts": repeated,
              "members": int(split["label"].sum()), "non_members": int((split["label"] == 0).sum()),
              "per_exposure": {str(e): int((split["exposure"] == e).sum()) for e in exposures}}
    progress(f"split: {counts['members']} members in {len(exposures)} exposure groups, {counts['non_members']} "
             f"non-members ({repeated} rows repeating an earlier text left out)")
    return split, counts


def _write_split(out: Store, split: pl.DataFrame) -> None:
    if not (out.exists("set.parquet") and pl.from_arrow(out.read_parquet("set.parquet")).equals(split)):
        out.write_parquet("set.parquet", split.to_arrow())  # (rewritten, the scan would start over)


def identity(split: pl.DataFrame, spec: FinetuneSpec, cfg: ScanConfig) -> dict:
    """A calibration folder's: the split (its samples, labels and exposures), the fine-tune's
    settings and the scan's; a resume must match it (scanner.runfolder.check_identity)."""
    digest = hashlib.sha256(json.dumps([split["sample_id"].to_list(), split["label"].to_list(),
                                        split["exposure"].to_list()]).encode()).hexdigest()[:12]
    return {"kind": "calibrate", "split": f"{split.height} texts, {int(split['label'].sum())} members, sha256 {digest}",
            "finetune": asdict(spec), "scoring_hash": cfg.scoring_hash()}


def _checked_baseline(split: pl.DataFrame, out: Store, seed: int, progress) -> dict:
    """The blind baseline must be at chance on a random split; else the run stops here."""
    baseline = _baseline(split, out, seed, progress)
    lo, hi = baseline["auc_ci"]
    progress(f"blind baseline on the split: AUC {baseline['auc']:.3f} [{lo:.3f}, {hi:.3f}]")
    if lo > 0.5:
        raise InputError(f"the blind baseline tells the random members from non-members by their text alone (AUC "
                         f"{baseline['auc']:.3f}, 95% CI [{lo:.3f}, {hi:.3f}]): the held-out set holds near-duplicates "
                         f"or a reader mixes columns. An honest random split trips this nominally 1 time in 40: if the "
                         f"data is clean, try another --seed")
    return baseline


def _finetune(split: pl.DataFrame, spec: FinetuneSpec, out: Store, progress) -> dict:
    members = split.filter(pl.col("label") == 1)
    stream = training_stream(members["exposure"].to_list(), spec.epochs, spec.seed)
    progress(f"fine-tuning ({spec.method}) {spec.model} on {members.height} members: {len(stream)} texts, "
             f"{-(-len(stream) // spec.batch_size)} steps")
    tuned = finetune_on_ray(spec, members["text"].to_list(), stream, out.uri_of("finetune"))
    progress(f"fine-tune done: {tuned['steps']} steps, final loss {tuned['losses'][-1]:.3f}, "
             f"{tuned['tokens_per_second']:,.0f} tokens/s" + (" (done before)" if tuned.get("skipped") else ""))
    return tuned


def _detectors(out: Store, scan_cfg: ScanConfig, target: ScanConfig, calibration: dict, split: pl.DataFrame,
               seed: int, progress) -> DetectorFolder:
    """Trained on the tuned copy's scan (unless done for this very scan run), then labelled for
    use on the target model: a sweep or nightly run with it scores the target, same features."""
    folder, scan = DetectorFolder(out.uri_of("detector")), out.uri_of("scan")
    run_id = RunFolder.existing(scan).run_id
    if folder.calibration == calibration and folder.split.get("run_id") == run_id and folder.has_never_seen():
        progress("detectors: trained before on this scan")
        return folder
    progress("training the detectors on the tuned copy's features (and cross-fitted scores of every sample)")
    own = own_reference(target)
    if own:
        progress(f"reference_model is the model calibrated: its reference scores ({', '.join(own)}) are reported, "
                 "and left out of the detectors (under the original model they would be constant)")
    train_on_ray(scan, folder.uri, seed=seed, cross_fit_folds=CROSS_FIT_FOLDS,
                 baseline_scores=out.uri_of(BASELINE_SCORES), exclude=tuple(own))
    folder.write_scan_config(asdict(original_config(scan_cfg, target)))
    folder.write_never_seen(never_seen_set(RunFolder.existing(scan).features().drop(own), folder, split))
    folder.write_calibration(calibration)  # last: marks the folder complete
    return folder


def own_reference(cfg: ScanConfig) -> list[str]:
    """The reference scores, when the reference model is the model calibrated ([] otherwise).
    Then they measure the fine-tune against its own base, which is worth reporting; but under the
    original model (a sweep's, a nightly's) the target is its reference, and they are constant."""
    if not cfg.reference_model or cfg.reference_model.rstrip("/") != cfg.model.rstrip("/"):
        return []
    return [s.name for s in registry.scores(cfg.score_modules) if "reference_model" in s.settings]


def original_config(scan_cfg: ScanConfig, target: ScanConfig) -> ScanConfig:
    """The scan settings under the original model: the detectors' (and the transfer check's),
    without a reference model that is that very model."""
    return replace(scan_cfg, model=target.model, revision=target.revision, adapter=target.adapter,
                   reference_model=None if own_reference(target) else target.reference_model)


def never_seen_set(features: pl.DataFrame, folder: DetectorFolder, split: pl.DataFrame) -> pl.DataFrame:
    """The detectors' test samples (no detector trained, stopped or set its threshold on them)
    with their exposure and each detector's member probability under the tuned copy."""
    test = features.filter(pl.col("sample_id").is_in(folder.split["test_ids"]))
    probs = {kind: MLPDetector.from_state(*folder.detector_state(kind)).predict_proba(test) for kind in folder.kinds()}
    return test.select("sample_id", "text", "label").with_columns(
        *(pl.Series(kind, p, pl.Float64) for kind, p in probs.items())).join(
        split.select("sample_id", "exposure"), on="sample_id", how="left")


def _transfer(out: Store, original: ScanConfig, detectors: DetectorFolder, progress) -> dict:
    """Each detector's FPR and shift under the original model (scanner.transfer), and
    every classic score's shift, which tells which inputs carry over from the tuned copy."""
    transfers = measure_transfers(detectors, original, out.uri_of("original"), progress)
    scores = score_shifts(RunFolder.existing(out.uri_of("scan")).features().join(
        detectors.never_seen().select("sample_id"), on="sample_id"), RunFolder.existing(out.uri_of("original")).features())
    return {"detectors": {kind: t.to_dict() for kind, t in transfers.items()}, "scores": scores}


def run_calibration(heldout: list[str], out: str, cfg: ScanConfig, spec: FinetuneSpec, exposures: list[int],
                    members_fraction: float = 0.5, seed: int = 0, columns: Columns = Columns(label=None),
                    progress: Callable[[str], None] = print) -> dict:
    check_model_path(cfg.model)  # before any work, not when the scan's actors load it
    if not BACKENDS[cfg.backend].fine_tuned_by_calibrate:
        raise InputError("calibrate fine-tunes causal language models on text; it has no vision-language path yet")
    if spec.method == "lora":  # (not after the fine-tune, when its scan starts)
        check_adapter_servable(cfg, instead="calibrate with --method full, or with backend hf")
    out_ = Store(absolute(out))
    with FolderLock(out_, "calibrate"):
        split, counts = _split(heldout, columns, members_fraction, exposures, seed, progress)
        ident = identity(split, spec, cfg)
        check_identity(out_, ident)
        _write_split(out_, split)
        save_identity(out_, ident)
        return _calibrate(out_, cfg, spec, split, counts, exposures, seed, progress)


def _calibrate(out_: Store, cfg: ScanConfig, spec: FinetuneSpec, split: pl.DataFrame, counts: dict,
               exposures: list[int], seed: int, progress) -> dict:
    import ray

    baseline = _checked_baseline(split, out_, seed, progress)
    if not ray.is_initialized():
        ray.init()
    tuned = _finetune(split, spec, out_, progress)
    scan_cfg = _scan_config(cfg, spec, out_.uri_of("finetune/model"))
    scanned = run_scan([out_.uri_of("set.parquet")], out_.uri_of("scan"), scan_cfg, progress=progress)
    require_complete(scanned, "the scan under the tuned copy failed")
    calibration = {"operating_point_from": "controlled contamination", "method": spec.method,
                   "exposures": exposures, "epochs": spec.epochs, "seen_times": [e * spec.epochs for e in exposures],
                   "tuned_model": out_.uri_of("finetune/model"), "members": counts["members"],
                   "non_members": counts["non_members"]}
    detectors = _detectors(out_, scan_cfg, cfg, calibration, split, seed, progress)
    transfer = _transfer(out_, original_config(scan_cfg, cfg), detectors, progress)
    samples, scores = all_scores(out_.uri_of("scan"), detectors, split)
    groups = by_exposure(samples, scores, spec.epochs, n_boot=1000, seed=seed)
    metrics = {"task": "calibrate", "model": cfg.model, "counts": counts, "blind_baseline": baseline,
               "finetune": {k: v for k, v in tuned.items() if k != "losses"} | {"final_loss": tuned["losses"][-1]},
               "evaluated_on": EVALUATED_ON, "by_exposure": groups,
               "detectors": {k: _saved(detectors.detector_meta(k)) for k in detectors.kinds()},
               "calibration": calibration, "transfer": transfer, "caveat": CAVEAT,
               "reference": {"model": cfg.reference_model, "left_out_of_detectors": own_reference(cfg)}}
    write_report(out_, "Calibration by controlled contamination", _blocks(metrics, tuned["losses"]), metrics)
    return metrics


def _saved(meta: dict) -> dict:
    info = meta["info"]
    return {"threshold": meta["threshold"], "operating_point": info["operating_point"]} | (
        {"form": info["form"], "form_estimates": info["form_estimates"]} if "form" in info else {})


def _blocks(m: dict, losses: list[float]) -> list:
    c, b, f = m["counts"], m["blind_baseline"], m["finetune"]
    groups = m["by_exposure"]
    top = max((g for g in groups if g != "overall"), key=lambda g: int(g.split()[1][:-1]), default="overall")
    detector_auc = {k: groups[top][f"{k} detector"]["auc"] for k in m["detectors"] if f"{k} detector" in groups[top]}
    classic = max((n for n in groups[top] if "detector" not in n and n != BASELINE), key=lambda n: groups[top][n]["auc"])
    form = m["detectors"].get("tabular", {}).get("form")
    shown = [f"{k} detector" for k in detector_auc] + [classic]
    rows = {f"{group}: {name}": (s[name]["auc"], *s[name]["auc_ci"]) for group, s in groups.items() for name in shown
            if name in s} | {BASELINE: (b["auc"], *b["auc_ci"])}
    blocks = [("p", f"**Model {m['model']}. At the highest exposure ({top}) the detectors reach AUC "
                    + ", ".join(f"{k} {fmt(a)}" for k, a in detector_auc.items())
                    + f" (best single score: {classic}, {fmt(groups[top][classic]['auc'])}); the blind baseline on "
                      f"the same random split: AUC {fmt(b['auc'])} "
                      f"[{fmt(b['auc_ci'][0])}, {fmt(b['auc_ci'][1])}] (at chance, as it must be).**"),
              ("img", "headline_auc.png", forest_png(
                  rows, "Members told from non-members, by times seen in fine-tuning", line=0.5, line_label="chance",
                  xlabel="AUC (95% interval)", xlim=(0.0, 1.0))),
              ("p", "Caveat: " + m["caveat"]),
              *([("p", f"The reference model is the model calibrated: its scores ({', '.join(own)}) measure the "
                       "fine-tune against its own base and are reported per group below, but the detectors do not "
                       "take them (under the original model, where sweeps and nightly checks run, the target is its "
                       "own reference and they are constant).")] if (own := m["reference"]["left_out_of_detectors"])
                else []),
              ("h2", "Transfer to the original model"),
              ("p", TRANSFER_NOTE),
              ("table", ["detector", "FPR, tuned copy", "FPR, original model", "shift AUC", "transfers"],
               [[kind, fmt(t["fpr_tuned"]), f"{fmt(t['fpr'])} ({t['operating_point']['fp']}/{t['operating_point']['n_neg']})",
                 fmt(t["shift_auc"]), "yes" if t["transfers"] else "no"]
                for kind, t in m["transfer"]["detectors"].items()]),
              ("table", ["score", "shift AUC"], [[name, fmt(a)] for name, a in m["transfer"]["scores"].items()]),
              ("h2", "Split"),
              ("p", f"{c['read']} held-out rows read, {c['quarantined']} quarantined, {c['repeated_texts']} repeating an "
                    f"earlier text left out; {c['members']} members ("
                    + ", ".join(f"{n} seen {int(e) * f['spec']['epochs']}x" for e, n in c["per_exposure"].items())
                    + f"), {c['non_members']} non-members, at random by sample id."),
              ("h2", "Fine-tune"),
              ("p", f"{f['spec']['method']}, {f['spec']['epochs']} epoch(s), learning rate {f['spec']['lr']:g}, batch "
                    f"{f['spec']['batch_size']}: {f['steps']} steps, final loss {fmt(f['final_loss'])}, "
                    f"{f['tokens_per_second']:,.0f} tokens/s on {f['device']}."),
              ("img", "finetune_loss.png", line_png({"training loss": losses}, "step", "loss")),
              ("h2", "Membership signal by exposure"),
              ("p", f"Each group's members against all non-members, on {m['evaluated_on']}. " + TPR_NOTE)]
    if form:
        blocks.insert(2, ("p", f"The saved tabular detector's form is {form}, chosen by out-of-fold AUC on its training "
                               "samples among an MLP, a logistic regression and each classic score alone."
                          + ("" if form in ("mlp", "linear") else
                             " No learned combination beat that score on this many samples, so the detector is that "
                             "score with a calibrated threshold; its cross-fitted AUC differs from the score's only by "
                             "each fold's own probability scaling.")))
    for group, scores in groups.items():
        blocks.append(("h2", group))
        blocks.append(("table", ["score", "AUC [95% CI]", "TPR@0.1%FPR", "TPR@1%FPR", "TPR@5%FPR"],
                       [[name + (" (text only)" if name == BASELINE else ""), fmt_auc(s), fmt_tpr(s, "0.001"),
                         fmt_tpr(s, "0.01"), fmt_tpr(s, "0.05")] for name, s in scores.items()]))
    return blocks
