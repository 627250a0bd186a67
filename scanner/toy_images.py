"""Image-text samples that need no download: scikit-learn's handwritten digits (1,797 images of
8x8 grey levels), enlarged and coloured, each with a caption. Used by the tests and the demo."""

from __future__ import annotations

import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STROKES = ("thin", "bold", "slanted", "upright", "wide", "narrow", "careful", "hasty", "round", "sharp")
PLACES = ("on a form", "in a notebook", "on an envelope", "on a cheque", "on a ticket", "in a margin")


def digit_images(size: int = 32, colormap: str = "viridis"):
    """(PIL RGB images, digit of each): every digit enlarged to size x size and coloured."""
    from matplotlib import colormaps
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    cmap = colormaps[colormap]
    images = []
    for grey in digits.images / 16.0:
        rgb = (cmap(grey)[:, :, :3] * 255).astype(np.uint8)
        images.append(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return images, digits.target.astype(int)


def captions(digits: np.ndarray, seed: int = 0) -> list[str]:
    """A caption per image: its digit in words and a seeded choice of stroke, place and writer,
    so captions are mostly distinct (a model can memorise a pair, not only a digit)."""
    rng = np.random.default_rng(seed)
    return [f"a {STROKES[rng.integers(len(STROKES))]} handwritten {DIGITS[d]} written {PLACES[rng.integers(len(PLACES))]} "
            f"by writer {rng.integers(1000)}" for d in digits]
