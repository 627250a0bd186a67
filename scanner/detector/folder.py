"""A `scanner train` output folder and every path in it; nothing else builds them.

  <kind>.safetensors, <kind>.json  one detector: weights and normalisation / everything else,
                                   its threshold and its operating point on held-out samples
  split.json                       the run_id of the scan it was trained on, the seed, the split
                                   fractions and the test sample ids
  scan_config.json                 the settings of that scan (a sweep computes the same features)
  baseline_scores.parquet          the blind baseline's out-of-fold scores of the same samples
  crossfit_scores.parquet          optional: every sample's score from detectors that never saw it
                                   (cross-fitting; `scanner calibrate` reports on these)
  calibration.json                 only from `scanner calibrate`: the operating point comes from
                                   controlled contamination (method, exposures)
  never_seen.parquet               only from `scanner calibrate`: the calibration texts of the test
                                   part (sample_id, text, label, exposure) and each detector's
                                   probability of them under the tuned copy; text the original model
                                   never saw, on which a run re-measures the FPR under the model it
                                   applies the detector to (scanner.detector.transfer)

Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
from safetensors.torch import load_file, save_file

from scanner.errors import InputError

KINDS = ("fimmia", "tabular")


class DetectorFolder:
    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def existing(cls, path) -> "DetectorFolder":
        folder = cls(path)
        if not (folder.path / "scan_config.json").is_file():
            raise InputError(f"{path}: not a `scanner train` output folder (no scan_config.json)")
        return folder

    def _write(self, name: str, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / name).write_text(text)

    def _read(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    # ------------------------------------------------------------ detectors

    def kinds(self) -> list[str]:
        return [k for k in KINDS if (self.path / f"{k}.json").is_file()]

    def save_detector(self, kind: str, tensors: dict, meta: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(self.path / f"{kind}.safetensors"))
        self._write(f"{kind}.json", json.dumps(meta, indent=2))

    def detector_meta(self, kind: str) -> dict:
        return self._read(f"{kind}.json")

    def detector_state(self, kind: str) -> tuple[dict, dict]:
        return load_file(str(self.path / f"{kind}.safetensors")), self.detector_meta(kind)

    def fingerprint(self, kind: str) -> str:
        """sha256 of the detector's files: a resumed sweep must use the same detector."""
        digest = hashlib.sha256()
        for suffix in (".json", ".safetensors"):
            digest.update((self.path / f"{kind}{suffix}").read_bytes())
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------ what it was trained on

    def write_split(self, split: dict) -> None:
        self._write("split.json", json.dumps(split))

    @property
    def split(self) -> dict:
        return self._read("split.json")

    def write_scan_config(self, config: dict) -> None:
        self._write("scan_config.json", json.dumps(config, indent=2))

    @property
    def scan_config(self) -> dict:
        return self._read("scan_config.json")

    def write_calibration(self, calibration: dict) -> None:
        self._write("calibration.json", json.dumps(calibration, indent=2))

    @property
    def calibration(self) -> dict | None:
        return self._read("calibration.json") if (self.path / "calibration.json").is_file() else None

    def write_baseline_scores(self, scores: pl.DataFrame) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        scores.write_parquet(self.path / "baseline_scores.parquet")

    def write_crossfit_scores(self, scores: pl.DataFrame) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        scores.write_parquet(self.path / "crossfit_scores.parquet")

    def crossfit_scores(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "crossfit_scores.parquet")

    @property
    def never_seen_path(self) -> Path:
        return self.path / "never_seen.parquet"

    def write_never_seen(self, samples: pl.DataFrame) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        samples.write_parquet(self.never_seen_path)

    def has_never_seen(self) -> bool:
        return self.never_seen_path.is_file()

    def never_seen(self) -> pl.DataFrame:
        return pl.read_parquet(self.never_seen_path)

    def never_seen_count(self) -> int:
        return pl.scan_parquet(self.never_seen_path).select(pl.len()).collect().item()

    def baseline_scores(self) -> pl.DataFrame | None:
        p = self.path / "baseline_scores.parquet"
        return pl.read_parquet(p) if p.is_file() else None
