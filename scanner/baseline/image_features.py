"""Image features for the model-free baseline: what a classifier that never sees the model can
read off an image-text sample's image alone.

Like the text features, each is computed from one image on its own (nothing learnt), so they
are computed once and the nested cross-validation fits everything else on training folds only.

Blocks (a dense matrix each, named columns for the report):
- img_color:   HSV histograms (16 bins per channel) and per-channel mean/std of RGB;
- img_freq:    the grey image's log power spectrum in 16 radial bands (2-D DCT), and the 8x8
               blockiness of JPEG-style compression;
- img_texture: uniform local binary patterns (P=8, R=1), a 10-bin histogram;
- img_hog:     HOG of the grey image at 64x64 (9 orientations, 16x16 cells, 2x2 blocks);
- img_meta:    size, aspect, bytes per pixel, format, mode, JPEG quantisation (quality),
               progressive, EXIF and ICC presence.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed

from scanner.baseline.features import TextFeatures

HSV_BINS = 16
DCT_BANDS = 16
DCT_SIZE = 128  # the spectrum is taken of the centre crop up to this size, at native resolution
HOG_SIZE = 64
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F")
BLOCKS = ("img_color", "img_freq", "img_texture", "img_hog", "img_meta")


def _names() -> dict[str, list[str]]:
    color = [f"{c} histogram bin {i + 1}/{HSV_BINS}" for c in ("hue", "saturation", "value") for i in range(HSV_BINS)]
    color += [f"{c} {s}" for c in ("red", "green", "blue") for s in ("mean", "std")]
    freq = [f"spectrum band {i + 1}/{DCT_BANDS} (low to high)" for i in range(DCT_BANDS)] + ["8x8 blockiness"]
    texture = [f"LBP code {i}" for i in range(10)]
    cells = HOG_SIZE // 16 - 1
    hog = [f"HOG block {b} orientation {o}" for b in range(cells * cells * 4) for o in range(9)]
    meta = ["width", "height", "log pixels", "aspect (w/h)", "bytes per pixel", "JPEG luma quantisation mean",
            "JPEG chroma quantisation mean", "progressive", "has EXIF", "has ICC profile"]
    meta += [f"format {f}" for f in FORMATS] + ["format other"] + [f"mode {m}" for m in MODES] + ["mode other"]
    return {"img_color": color, "img_freq": freq, "img_texture": texture, "img_hog": hog, "img_meta": meta}


NAMES = _names()


def _meta(im, n_bytes: int) -> np.ndarray:
    w, h = im.size
    q = getattr(im, "quantization", None) or {}
    info = im.info
    fmt = [float(im.format == f) for f in FORMATS] + [float(im.format not in FORMATS)]
    mode = [float(im.mode == m) for m in MODES] + [float(im.mode not in MODES)]
    return np.array([w, h, np.log(w * h), w / h, n_bytes / (w * h),
                     np.mean(q[0]) if 0 in q else 0.0, np.mean(q[1]) if 1 in q else 0.0,
                     float(bool(info.get("progressive") or info.get("progression"))),
                     float(bool(info.get("exif"))), float(bool(info.get("icc_profile"))), *fmt, *mode])


def _color(rgb) -> np.ndarray:
    hsv = np.asarray(rgb.convert("HSV"), dtype=np.float64).reshape(-1, 3)
    hists = [np.histogram(hsv[:, c], bins=HSV_BINS, range=(0, 256))[0] / len(hsv) for c in range(3)]
    px = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255
    return np.concatenate([*hists, np.c_[px.mean(0), px.std(0)].ravel()])


def _freq(grey: np.ndarray) -> np.ndarray:
    from scipy.fft import dctn

    h, w = grey.shape
    top, left = max(0, (h - DCT_SIZE) // 2), max(0, (w - DCT_SIZE) // 2)
    crop = grey[top:top + DCT_SIZE, left:left + DCT_SIZE]
    power = np.log1p(dctn(crop - crop.mean(), norm="ortho") ** 2)
    yy, xx = np.mgrid[0:crop.shape[0], 0:crop.shape[1]]
    radius = np.hypot(yy / crop.shape[0], xx / crop.shape[1]) / np.sqrt(2)
    band = np.minimum((radius * DCT_BANDS).astype(int), DCT_BANDS - 1)
    bands = np.bincount(band.ravel(), power.ravel(), DCT_BANDS) / np.maximum(np.bincount(band.ravel(), minlength=DCT_BANDS), 1)
    # JPEG's 8x8 blocks: jumps across block edges against jumps inside blocks
    dx = np.abs(np.diff(grey, axis=1))
    edge = dx[:, 7::8].mean() if dx.shape[1] > 8 else 0.0
    blockiness = edge / (dx.mean() + 1e-9) if dx.size else 0.0
    return np.r_[bands, blockiness]


def _texture(grey: np.ndarray) -> np.ndarray:
    from skimage.feature import local_binary_pattern

    codes = local_binary_pattern(grey.astype(np.uint8), P=8, R=1, method="uniform")
    return np.bincount(codes.astype(int).ravel(), minlength=10)[:10] / codes.size


def _hog(grey_image) -> np.ndarray:
    from PIL import Image
    from skimage.feature import hog

    small = np.asarray(grey_image.resize((HOG_SIZE, HOG_SIZE), Image.BILINEAR), dtype=np.float64)
    return hog(small, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), feature_vector=True)


def image_row(data: bytes) -> dict[str, np.ndarray]:
    """One encoded image's feature blocks."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        meta = _meta(im, len(data))
        rgb = im.convert("RGB")
    grey_image = rgb.convert("L")
    grey = np.asarray(grey_image, dtype=np.float64)
    return {"img_color": _color(rgb), "img_freq": _freq(grey), "img_texture": _texture(grey),
            "img_hog": _hog(grey_image), "img_meta": meta}


def _rows(images: list[bytes]) -> dict[str, np.ndarray]:
    rows = [image_row(b) for b in images]
    return {k: np.vstack([r[k] for r in rows]) for k in BLOCKS}


def compute_image_features(images: list[bytes], n_jobs: int | None = None, chunk: int = 500) -> dict[str, np.ndarray]:
    """Every block for every image, in order (chunks in parallel processes)."""
    if len(images) <= chunk:
        return _rows(images)
    n_jobs = n_jobs or len(os.sched_getaffinity(0))
    parts = Parallel(n_jobs=n_jobs)(delayed(_rows)(images[i:i + chunk]) for i in range(0, len(images), chunk))
    return {k: np.vstack([p[k] for p in parts]) for k in BLOCKS}


@dataclass
class ImageTextFeatures:
    """The caption's text blocks and the image's blocks, for one nested cross-validation."""

    text: TextFeatures
    image: dict[str, np.ndarray]

    def __post_init__(self):
        self.image = self.image | {"img_all": np.hstack([self.image[b] for b in BLOCKS])}

    @property
    def word(self):
        return self.text.word

    def block(self, name: str):
        return self.image[name] if name in self.image else self.text.block(name)
