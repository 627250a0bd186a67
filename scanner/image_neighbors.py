"""Seeded perturbations ("neighbors") of an image-text sample's image, as in FiMMIA.

Each kind is a function (RGB image, rng) -> RGB image; a neighbor is seeded like a text one
(scanner.neighbors.rng_for: SHA-256 of (seed, sample_id, index)), so the same config gives the
same neighbor images anywhere. Strengths are mild on purpose: a neighbor should stay the same
picture, so that its loss differs from the original's by how sharply the model fits that
picture, not by what the picture shows.

Kinds: noise (Gaussian, sigma 8 of 255), blur (Gaussian, radius 0.5-1.5 px), crop (80-95% of
each side, resized back), rotate (+-5-15 degrees, edges filled by the nearest pixels' mean
colour), jpeg (recompressed at quality 30-70), and invert (colour inversion: the "adversarial"
kind, which training pipelines rarely use and FiMMIA found the strongest membership signal).
"""

from __future__ import annotations

import numpy as np

from scanner.images import decode_rgb, encode

DEFAULT_IMAGE_KINDS = ("noise", "blur", "crop", "rotate", "jpeg", "invert")


def _noise(im, rng):
    from PIL import Image

    px = np.asarray(im, dtype=np.float64) + rng.normal(0.0, 8.0, (im.height, im.width, 3))
    return Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8))


def _blur(im, rng):
    from PIL import ImageFilter

    return im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))


def _crop(im, rng):
    from PIL import Image

    w, h = im.size
    cw, ch = max(1, round(w * rng.uniform(0.8, 0.95))), max(1, round(h * rng.uniform(0.8, 0.95)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)


def _rotate(im, rng):
    from PIL import Image

    angle = float(rng.uniform(5, 15) * rng.choice((-1, 1)))
    fill = tuple(int(c) for c in np.asarray(im, dtype=np.float64).reshape(-1, 3).mean(0))
    return im.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)


def _jpeg(im, rng):
    return decode_rgb(encode(im, "JPEG", quality=int(rng.integers(30, 71))))


def _invert(im, rng):
    from PIL import ImageOps

    return ImageOps.invert(im)


IMAGE_PERTURBATIONS = {"noise": _noise, "blur": _blur, "crop": _crop, "rotate": _rotate, "jpeg": _jpeg,
                       "invert": _invert}


def perturb_image(image: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One neighbor of an encoded image, as PNG (lossless: only the kind changes the pixels)."""
    return encode(IMAGE_PERTURBATIONS[kind](decode_rgb(image), rng))
