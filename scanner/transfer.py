"""Does a calibrated detector's operating point hold on the model it is applied to?

`scanner calibrate` measures TPR and FPR on a fine-tuned copy of the model; sweeps and nightly
checks apply the detector to the original model or a later checkpoint. Fine-tuning moves every
text's features, not only the members': after a full fine-tune of a model that had seen no text,
the detector flagged half of all never-seen text under the original model (true answer: none).

So a run that applies a calibrated detector to any model but the tuned copy first scores, under
that model, the calibration texts no detector was trained on (the detector folder's never-seen
set: its test part, members and non-members alike, since only the copy saw the members):

- FPR: the share of them flagged under this model replaces the copy's, with its own uncertainty
  in the interval; TPR stays the copy's, an assumption the report states.
- shift: the AUC of telling their scores under this model from the non-members' scores under the
  copy (0.5: the scores did not move). Further than SHIFT_TOLERANCE from 0.5, the fine-tune moved
  the detector's inputs for all text, so the copy's TPR says little about this model. A detector
  chosen by "auto" is then replaced by one that transfers, if the folder has one; else the run
  stops in one line unless the user accepts the shift, and the report's first sentence says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
import numpy as np
import polars as pl

from scanner.config import ScanConfig
from scanner.contamination import OperatingPoint
from scanner.detector.data import available_classic, member_score
from scanner.detector.folder import DetectorFolder
from scanner.detector.trained import TrainedDetector, load_trained
from scanner.errors import InputError
from scanner.metrics import roc_auc
from scanner.storage import absolute

SHIFT_TOLERANCE = 0.15  # |shift AUC - 0.5| beyond this: the detector does not transfer
SHARD_ROWS = 100


@dataclass(frozen=True)
class Transfer:
    """The detector's operating point under the applied model, and how far its scores moved."""

    operating_point: OperatingPoint  # tp, n_pos: the tuned copy's; fp, n_neg: the never-seen texts, this model
    fpr_tuned: float  # the copy's FPR, on the never-seen set's non-members
    shift_auc: float
    model: str

    @property
    def transfers(self) -> bool:
        return abs(self.shift_auc - 0.5) <= SHIFT_TOLERANCE

    def to_dict(self) -> dict:
        op = self.operating_point
        return {"model": self.model, "operating_point": asdict(op), "fpr": op.fpr, "fpr_tuned": self.fpr_tuned,
                "shift_auc": self.shift_auc, "tolerance": SHIFT_TOLERANCE, "transfers": self.transfers}


def applies_to_tuned_copy(detector: TrainedDetector, cfg: ScanConfig) -> bool:
    """True when cfg scores with the very model the operating point was measured on."""
    cal = detector.calibration
    tuned = absolute(cal["tuned_model"])
    if cal["method"] == "lora":
        return cfg.adapter is not None and absolute(cfg.adapter) == tuned and cfg.model == detector.scan_config["model"]
    return absolute(cfg.model) == tuned


def never_seen_config(cfg: ScanConfig) -> ScanConfig:
    """cfg's model and features over the never-seen set's own columns."""
    return replace(cfg, text_col="text", id_col="sample_id", label_col="label", source_col=None, image_col=None,
                   shard_size=min(cfg.shard_size, SHARD_ROWS))


def measure_transfers(folder: DetectorFolder, cfg: ScanConfig, out: str, progress) -> dict[str, Transfer]:
    """Every detector of a calibrated folder on its never-seen set under cfg's model: one scan of
    the set (a resumable run in `out`), each detector applied to its features here."""
    from scanner.engine import require_complete
    from scanner.runfolder import RunFolder
    from scanner.scan import run_scan

    if not folder.has_never_seen():
        raise InputError(f"{folder.uri}: calibrated before never-seen texts were kept, so its operating point "
                         "cannot be checked on another model; run `scanner calibrate` again (it resumes)")
    progress(f"does the calibrated detector transfer to {cfg.model}? Scoring the {folder.never_seen_count()} "
             "never-seen calibration texts under it")
    require_complete(run_scan([folder.never_seen_uri], out, never_seen_config(cfg), progress=progress),
                     "scoring the never-seen calibration texts failed")
    features, never_seen = RunFolder(out).features(), folder.never_seen()
    transfers = {}
    for kind in folder.kinds():
        detector = load_trained(folder.uri, kind)
        prob, flagged = detector.score(features)
        applied = features.select("sample_id").with_columns(pl.Series("member_prob", prob),
                                                            pl.Series("flagged", flagged))
        transfers[kind] = compare(never_seen, applied, detector, cfg.model)
        progress(f"{kind} detector: {transfer_line(transfers[kind])}")
    return transfers


def compare(never_seen: pl.DataFrame, applied: pl.DataFrame, detector: TrainedDetector, model: str) -> Transfer:
    """never_seen: sample_id, label and the copy's probability per detector kind; applied: the
    same samples' member_prob and flagged under the applied model."""
    both = never_seen.join(applied, on="sample_id", how="inner")
    if both.height != never_seen.height:
        raise InputError(f"{never_seen.height - both.height} of the {never_seen.height} never-seen calibration texts "
                         "have no score under the applied model")
    copy_non_members = both.filter(pl.col("label") == 0)[detector.kind].to_numpy()
    scores = pl.concat([both["member_prob"], pl.Series(copy_non_members)]).to_numpy()
    labels = [1] * both.height + [0] * len(copy_non_members)
    op = detector.operating_point
    return Transfer(operating_point=OperatingPoint(tp=op.tp, n_pos=op.n_pos, fp=int(both["flagged"].sum()),
                                                   n_neg=both.height),
                    fpr_tuned=float((copy_non_members > detector.threshold).mean()),
                    shift_auc=roc_auc(labels, scores), model=model)


def exposure_points(detector: TrainedDetector, fp: int, n_neg: int) -> dict[str, OperatingPoint]:
    """A calibrated detector's operating point per exposure group ("seen 16x": TP of that group's
    never-seen members under the tuned copy), each with the FPR counts given; empty where the
    folder has fewer than two groups or predates them."""
    folder = DetectorFolder.existing(detector.folder)
    if detector.calibration is None or not folder.has_never_seen():
        return {}
    members = folder.never_seen().filter(pl.col("label") == 1)
    if "exposure" not in members.columns or members["exposure"].n_unique() < 2:
        return {}
    epochs = detector.calibration["epochs"]
    return {f"seen {e * epochs}x": OperatingPoint(tp=int((g[detector.kind] > detector.threshold).sum()),
                                                  n_pos=g.height, fp=fp, n_neg=n_neg)
            for (e,), g in sorted(members.group_by("exposure"), key=lambda kv: kv[0])}


def score_shifts(copy: pl.DataFrame, applied: pl.DataFrame) -> dict[str, float]:
    """Each classic score's shift AUC: the never-seen texts' values under the applied model
    against the non-members' under the tuned copy, in the member direction (above 0.5: under the
    applied model, text the model never saw looks more seen than non-members did under the copy)."""
    non_members = copy.filter(pl.col("label") == 0)
    shifts = {}
    for name in available_classic(copy):
        if name in available_classic(applied):
            a, c = member_score(applied, name), member_score(non_members, name)
            shifts[name] = roc_auc(np.r_[np.ones(len(a)), np.zeros(len(c))], np.r_[a, c])
    return shifts


def transferred_detector(detector: TrainedDetector, cfg: ScanConfig, out: str, accept_shift: bool,
                         progress) -> tuple[TrainedDetector, Transfer | None]:
    """The detector to apply to cfg's model and its operating point there: for a calibrated
    detector and any model but the tuned copy, measured on the never-seen set (None otherwise).
    A detector chosen by "auto" becomes the best on validation among those that transfer. One
    that does not transfer stops the run (one line, exit 2) unless the user accepts the shift."""

    if detector.calibration is None or applies_to_tuned_copy(detector, cfg):
        return detector, None
    folder = DetectorFolder.existing(detector.folder)
    transfers = measure_transfers(folder, cfg, out, progress)
    kind = chosen_kind(transfers, detector.kind, detector.auto_kind,
                       {k: folder.detector_meta(k)["info"]["best_val_auc"] for k in transfers})
    if kind != detector.kind:
        progress(f"the {detector.kind} detector does not transfer to this model, the {kind} detector does: using it")
        detector = load_trained(detector.folder, kind)
        detector.check_usable_with(cfg)
    transfer = transfers[kind]
    if not transfer.transfers and not accept_shift:
        raise InputError(
            f"the calibrated {kind} detector does not transfer to {transfer.model}: {transfer_line(transfer)}. Its "
            "TPR, measured on the tuned copy, says little here; sweep the tuned copy itself, or calibrate with LoRA "
            "(it moves the model less), or pass --accept-shift to estimate anyway")
    return detector, transfer


def chosen_kind(transfers: dict[str, Transfer], kind: str, auto: bool, val_auc: dict[str, float]) -> str:
    """kind; but a kind chosen by "auto" that does not transfer gives way to the best on
    validation among those that do (when one does)."""
    if not auto or transfers[kind].transfers:
        return kind
    return max((k for k, t in transfers.items() if t.transfers), key=val_auc.get, default=kind)


def transfer_line(t: Transfer) -> str:
    op = t.operating_point
    return (f"never-seen calibration texts flagged {op.fp}/{op.n_neg} (FPR {op.fpr:.3f}) under this model vs "
            f"{t.fpr_tuned:.3f} under the tuned copy; shift AUC {t.shift_auc:.3f} (0.5 = unmoved, tolerance "
            f"±{SHIFT_TOLERANCE})")


def operating_point_sentence(op: dict, transfer: dict | None) -> str:
    """What a report says about the TPR and FPR behind its estimates (op: asdict of the
    operating point used, transfer: Transfer.to_dict or None)."""
    tpr, fpr = op["tp"] / op["n_pos"], op["fp"] / op["n_neg"]
    if transfer is None:
        return (f"On its held-out samples it flagged {op['tp']}/{op['n_pos']} members (TPR {tpr:.3f}) and "
                f"{op['fp']}/{op['n_neg']} non-members (FPR {fpr:.3f}).")
    return (f"TPR {tpr:.3f}: it flagged {op['tp']}/{op['n_pos']} held-out members under the tuned copy (assumed for "
            f"this model). FPR {fpr:.3f}: it flagged {op['fp']}/{op['n_neg']} never-seen calibration texts under this "
            f"model ({transfer['fpr_tuned']:.3f} of the non-members under the tuned copy; shift AUC "
            f"{transfer['shift_auc']:.3f}, 0.5 = unmoved).")


def transfer_warning(transfer: dict) -> str:
    """The first sentence of a report that estimated although the detector does not transfer."""
    return (f"Warning: the calibrated detector does not transfer to this model (shift AUC {transfer['shift_auc']:.3f}, "
            f"beyond 0.5 ± {transfer['tolerance']}: never-seen text flagged at {transfer['fpr']:.3f} here vs "
            f"{transfer['fpr_tuned']:.3f} under the tuned copy) and the run went on (--accept-shift): its TPR is the "
            "tuned copy's, so the estimate can be wrong in either direction.")
