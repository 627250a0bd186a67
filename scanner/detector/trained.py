"""A `scanner train` folder as sweeps and nightly checks use it: one detector, its calibrated
threshold, its operating point on held-out samples and the scan settings its features need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from scanner.config import ScanConfig, renamed
from scanner.contamination import OperatingPoint
from scanner.detector.folder import KINDS, DetectorFolder
from scanner.detector.mlp import MLPDetector
from scanner.errors import InputError
from scanner.storage import absolute


@dataclass
class TrainedDetector:
    detector: MLPDetector
    kind: str
    folder: str  # a local path or a URI
    operating_point: OperatingPoint
    scan_config: dict
    fingerprint: str  # of the detector's files: a resumed sweep must use the same detector
    calibration: dict | None = None  # from `scanner calibrate`: how the operating point was measured
    auto_kind: bool = False  # chosen by "auto", not asked for: another kind may replace it (scanner.transfer)

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    @property
    def name(self) -> str:
        """The kind, and for a tabular detector its form (scanner.detector.select)."""
        form = self.detector.info.get("form")
        return f"{self.kind} ({form})" if form else self.kind

    @property
    def spec(self) -> dict:
        """What the scoring actors need to load it themselves."""
        return {"folder": str(self.folder), "kind": self.kind, "fingerprint": self.fingerprint}

    def score(self, features: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(member probability, flagged at the calibrated FPR) per row."""
        prob = self.detector.predict_proba(features)
        return prob, prob > self.detector.threshold

    def base_config(self) -> dict:
        """The model and feature settings of the scan it was trained on."""
        return ScanConfig(**renamed(self.scan_config)).inherited()

    def check_usable_with(self, cfg: ScanConfig) -> None:
        """Before any work: the features must be computed as in training, and the detector must
        tell members from non-members at all (else no fraction can be estimated)."""
        from scanner.scoring import registry

        trained_cfg = ScanConfig(**renamed(self.scan_config))
        trained, now = trained_cfg.feature_settings(), cfg.feature_settings()
        scores = registry.difference(trained_cfg.score_identity(), cfg.score_identity())
        differ = {k: (trained.get(k), now.get(k)) for k in sorted(set(trained) | set(now))
                  if trained.get(k) != now.get(k) and k not in ("score_versions", "score_modules")}
        if differ or scores:
            raise InputError("the detector was trained on features computed with other settings: "
                             + "; ".join([f"{k} {a!r} (trained) vs {b!r}" for k, (a, b) in differ.items()]
                                         + ([scores] if scores else [])))
        op = self.operating_point
        if op.n_pos == 0 or op.n_neg == 0 or op.tpr <= op.fpr:
            raise InputError(f"{self.folder}: the {self.kind} detector does not separate members from non-members "
                             f"on its held-out samples (TPR {op.tp}/{op.n_pos} <= FPR {op.fp}/{op.n_neg}), so it "
                             "cannot estimate how much was seen; train it on a scan with a membership signal")


def calibration_note(cal: dict, transfer: dict | None = None) -> str:
    """What a report says about an operating point measured by `scanner calibrate` (transfer:
    scanner.transfer's measurement under the applied model, None for the tuned copy)."""
    seen = "/".join(map(str, cal["seen_times"]))
    said = (f"The detector was calibrated by controlled contamination (`scanner calibrate`): a {cal['method']} "
            f"fine-tune of the model on {cal['members']} random members of held-out text, seen {seen} times. ")
    if transfer is None:
        return said + "This run scores that tuned copy: TPR and FPR were measured on the model scored here."
    return said + TPR_ASSUMPTION


TPR_ASSUMPTION = ("The FPR was measured again under this model, on calibration texts it never saw: it holds for "
                  "never-seen documents like them. The TPR is the tuned copy's, an assumption: pretraining exposure "
                  "differs from the fine-tune's, so the TPR on this model's members can be lower (the estimate then "
                  "too low) or higher (too high); both were measured (see the README), hence the range over the "
                  "calibrated exposures.")


def load_trained(folder: str, kind: str = "auto") -> TrainedDetector:
    """kind "auto": the detector with the best validation AUC (chosen without the test samples
    that measured the operating point)."""
    df = DetectorFolder.existing(folder)
    present = df.kinds()
    auto = kind == "auto"
    if auto:
        if not present:
            raise InputError(f"{folder}: no detector in it")
        kind = max(present, key=lambda k: df.detector_meta(k)["info"]["best_val_auc"])
    elif kind not in present:
        raise InputError(f"{folder}: no {kind!r} detector (present: {present}; kinds: {KINDS})")
    det = MLPDetector.from_state(*df.detector_state(kind))
    if "operating_point" not in det.info:
        raise InputError(f"{folder}/{kind}.json has no operating point; train it again with this version")
    return TrainedDetector(detector=det, kind=kind, folder=absolute(folder),
                           operating_point=OperatingPoint(**det.info["operating_point"]),
                           scan_config=df.scan_config, fingerprint=df.fingerprint(kind), calibration=df.calibration,
                           auto_kind=auto)
