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
                                   applies the detector to (scanner.transfer)

Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import io

import polars as pl
from safetensors.torch import load, save

from scanner.config import ScanConfig, renamed, scores_pinned
from scanner.errors import InputError
from scanner.scoring import registry
from scanner.storage import Store

KINDS = ("fimmia", "tabular")


class DetectorFolder:
    """The folder (a local path or a URI) through scanner.storage."""

    def __init__(self, uri, create: bool = True):
        self.store = Store(str(uri), create=create)
        self.uri = self.store.uri

    @classmethod
    def existing(cls, uri) -> "DetectorFolder":
        folder = cls(uri, create=False)
        if not folder.store.exists("scan_config.json"):
            raise InputError(f"{uri}: not a `scanner train` output folder (no scan_config.json)")
        return folder

    def _write(self, name: str, obj) -> None:
        self.store.write_json(name, obj)

    def _read(self, name: str) -> dict:
        return self.store.read_json(name)

    def _write_frame(self, name: str, frame: pl.DataFrame) -> None:
        self.store.write_parquet(name, frame.to_arrow())

    def _read_frame(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.store.read_bytes(name)))

    # ------------------------------------------------------------ detectors

    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.store.exists(f"{k}.json")]

    def save_detector(self, kind: str, tensors: dict, meta: dict) -> None:
        self.store.write_bytes(f"{kind}.safetensors", save(tensors))
        self._write(f"{kind}.json", meta)

    def detector_meta(self, kind: str) -> dict:
        return self._read(f"{kind}.json")

    def detector_state(self, kind: str) -> tuple[dict, dict]:
        return load(self.store.read_bytes(f"{kind}.safetensors")), self.detector_meta(kind)

    def fingerprint(self, kind: str) -> str:
        """sha256 of the detector's files: a resumed sweep must use the same detector."""
        digest = hashlib.sha256()
        for suffix in (".json", ".safetensors"):
            digest.update(self.store.read_bytes(f"{kind}{suffix}"))
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------ what it was trained on

    def write_split(self, split: dict) -> None:
        self._write("split.json", split)

    @property
    def split(self) -> dict:
        return self._read("split.json")

    def write_scan_config(self, config: dict) -> None:
        """The scan's settings, with the scores it computed named (scanner.config.scores_pinned)."""
        computed = ScanConfig(**renamed(config)).score_identity() or registry.BEFORE_REGISTRY
        self._write("scan_config.json", config | {"scores": list(computed)})

    @property
    def scan_config(self) -> dict:
        return scores_pinned(self._read("scan_config.json"))

    def write_calibration(self, calibration: dict) -> None:
        self._write("calibration.json", calibration)

    @property
    def calibration(self) -> dict | None:
        return self._read("calibration.json") if self.store.exists("calibration.json") else None

    def write_baseline_scores(self, scores: pl.DataFrame) -> None:
        self._write_frame("baseline_scores.parquet", scores)

    def baseline_scores(self) -> pl.DataFrame | None:
        return self._read_frame("baseline_scores.parquet") if self.store.exists("baseline_scores.parquet") else None

    def write_crossfit_scores(self, scores: pl.DataFrame) -> None:
        self._write_frame("crossfit_scores.parquet", scores)

    def crossfit_scores(self) -> pl.DataFrame:
        return self._read_frame("crossfit_scores.parquet")

    @property
    def never_seen_uri(self) -> str:
        """The never-seen set as an input file of a scan."""
        return self.store.uri_of("never_seen.parquet")

    def write_never_seen(self, samples: pl.DataFrame) -> None:
        self._write_frame("never_seen.parquet", samples)

    def has_never_seen(self) -> bool:
        return self.store.exists("never_seen.parquet")

    def never_seen(self) -> pl.DataFrame:
        return self._read_frame("never_seen.parquet")

    def never_seen_count(self) -> int:
        return self.never_seen().height
