"""A `scanner train` folder as sweeps and nightly checks use it: one detector, its calibrated
threshold, its operating point on held-out samples and the scan settings its features need."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from scanner.config import ScanConfig
from scanner.contamination import OperatingPoint
from scanner.detector.mlp import KINDS, MLPDetector
from scanner.errors import InputError

# what a sweep takes over from the training scan: the feature settings and the model
INHERITED = ("model", "revision", "trust_remote_code", "dtype", "max_length", *ScanConfig().feature_settings())


@dataclass
class TrainedDetector:
    detector: MLPDetector
    kind: str
    operating_point: OperatingPoint
    scan_config: dict
    fingerprint: str  # sha256 of the detector's files: a resumed sweep must use the same detector

    @property
    def threshold(self) -> float:
        return self.detector.threshold

    def score(self, features: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(member probability, flagged at the calibrated FPR) per row."""
        prob = self.detector.predict_proba(features)
        return prob, prob > self.detector.threshold

    def base_config(self) -> dict:
        return {k: self.scan_config[k] for k in INHERITED if k in self.scan_config}

    def check_compatible(self, cfg: ScanConfig) -> None:
        trained = ScanConfig(**self.scan_config).feature_settings()
        differ = {k: (trained[k], v) for k, v in cfg.feature_settings().items() if trained[k] != v}
        if differ:
            raise InputError("the detector was trained on features computed with other settings: "
                             + ", ".join(f"{k} {a!r} (trained) vs {b!r}" for k, (a, b) in differ.items()))


def load_trained(folder: str | Path, kind: str = "auto") -> TrainedDetector:
    """kind "auto": the detector with the best validation AUC (chosen without the test samples
    that measured the operating point)."""
    folder = Path(folder)
    if not (folder / "scan_config.json").is_file():
        raise InputError(f"{folder}: not a `scanner train` output folder (no scan_config.json)")
    present = [k for k in KINDS if (folder / f"{k}.json").is_file()]
    if kind == "auto":
        if not present:
            raise InputError(f"{folder}: no detector in it")
        kind = max(present, key=lambda k: json.loads((folder / f"{k}.json").read_text())["info"]["best_val_auc"])
    elif kind not in present:
        raise InputError(f"{folder}: no {kind!r} detector (present: {present}; kinds: {KINDS})")
    det = MLPDetector.load(folder, kind)
    if "operating_point" not in det.info:
        raise InputError(f"{folder}/{kind}.json has no operating point; train it again with this version")
    digest = hashlib.sha256()
    for suffix in (".json", ".safetensors"):
        digest.update((folder / f"{kind}{suffix}").read_bytes())
    return TrainedDetector(detector=det, kind=kind, operating_point=OperatingPoint(**det.info["operating_point"]),
                           scan_config=json.loads((folder / "scan_config.json").read_text()),
                           fingerprint=digest.hexdigest()[:16])
