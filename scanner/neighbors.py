"""Seeded word-level perturbations ("neighbors") of a text, as in FiMMIA.

Each perturbation is a function (words, positions, rng) -> None that edits a list of the text's
parts in place; whitespace between words is kept wherever the edit did not touch it. Neighbor i
of a sample uses kind kinds[i % len(kinds)] and a generator seeded from (seed, sample_id, i) by
SHA-256, so the same config gives the same neighbors on any machine and in any process.

Kinds: delete, duplicate, swap, random_word (a word from elsewhere in the same text), mlm (the
word is marked here and filled later by a fill-mask model, see scanner.mlm), and case_invert, an
"adversarial" kind meant for evaluation only: it is not in the default training mix.

An image-text sample's neighbor perturbs its image (scanner.image_neighbors, kinds `image_kinds`,
seeded apart from the text's), its text, or both (`perturb`); with both, its kind reads
"<image kind>+<text kind>".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from scanner.image_neighbors import DEFAULT_IMAGE_KINDS, IMAGE_PERTURBATIONS, perturb_image

# marks around a word that the fill-mask stage (scanner.mlm) replaces; never in real text
MASK_OPEN, MASK_CLOSE = "\x00MASK[", "]\x00"
DEFAULT_KINDS = ("delete", "duplicate", "swap", "random_word")
PERTURB_TARGETS = ("image", "text", "both")
_SPLIT = re.compile(r"(\s+)")


@dataclass(frozen=True)
class NeighborConfig:
    k: int = 24
    kinds: tuple[str, ...] = DEFAULT_KINDS
    fraction: float = 0.1  # of the words changed per neighbor...
    min_changes: int = 1  # ...clamped to [min_changes, max_changes]
    max_changes: int = 20
    seed: int = 0
    image_kinds: tuple[str, ...] = DEFAULT_IMAGE_KINDS  # image-text samples only
    perturb: str = "image"  # of an image-text sample: "image", "text" or "both"

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown neighbor kinds {unknown}; known: {sorted(PERTURBATIONS)}")
        unknown = [k for k in self.image_kinds if k not in IMAGE_PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown image neighbor kinds {unknown}; known: {sorted(IMAGE_PERTURBATIONS)}")
        if self.perturb not in PERTURB_TARGETS:
            raise ValueError(f"neighbors perturb {self.perturb!r}: one of {', '.join(PERTURB_TARGETS)}")
        if not self.kinds or not self.image_kinds:
            raise ValueError("need at least one neighbor kind and one image neighbor kind")
        if self.k < 0 or not 0 <= self.min_changes <= self.max_changes:
            raise ValueError("need k >= 0 and 0 <= min_changes <= max_changes")


def rng_for(seed: int, sample_id: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{sample_id}\0{index}".encode("utf-8", "surrogatepass")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _word_slots(parts: list[str]) -> list[int]:
    return [i for i, p in enumerate(parts) if p and not p.isspace()]


def _delete(parts, slots, rng):
    for i in sorted(slots, reverse=True):
        if len(_word_slots(parts)) <= 1:
            return  # never delete the last word
        parts[i] = ""
        # drop one neighbouring gap so two gaps do not merge into a double space
        if i + 1 < len(parts) and parts[i + 1].isspace():
            parts[i + 1] = ""
        elif i > 0 and parts[i - 1].isspace():
            parts[i - 1] = ""


def _duplicate(parts, slots, rng):
    for i in slots:
        parts[i] = f"{parts[i]} {parts[i]}"


def _swap(parts, slots, rng):
    words = _word_slots(parts)
    for i in slots:
        j = words.index(i)
        if j + 1 < len(words):
            a, b = words[j], words[j + 1]
            parts[a], parts[b] = parts[b], parts[a]


def _random_word(parts, slots, rng):
    pool = [parts[i] for i in _word_slots(parts)]
    for i in slots:
        others = [w for w in pool if w != parts[i]]
        if others:
            parts[i] = others[int(rng.integers(len(others)))]


def _mask(parts, slots, rng):
    for i in slots:
        parts[i] = f"{MASK_OPEN}{parts[i]}{MASK_CLOSE}"


def _case_invert(parts, slots, rng):
    for i in slots:
        parts[i] = parts[i].swapcase()


PERTURBATIONS: dict[str, Callable] = {
    "delete": _delete,
    "duplicate": _duplicate,
    "swap": _swap,
    "random_word": _random_word,
    "mlm": _mask,
    "case_invert": _case_invert,
}


def n_changes(n_words: int, cfg: NeighborConfig) -> int:
    return int(min(n_words, max(cfg.min_changes, min(cfg.max_changes, round(cfg.fraction * n_words)))))


def perturb(text: str, kind: str, rng: np.random.Generator, cfg: NeighborConfig) -> str:
    parts = _SPLIT.split(text)
    slots = _word_slots(parts)
    n = n_changes(len(slots), cfg)
    chosen = sorted(rng.choice(slots, size=n, replace=False).tolist()) if n else []
    PERTURBATIONS[kind](parts, chosen, rng)
    return "".join(parts)


def make_neighbors(text: str, sample_id: str, cfg: NeighborConfig) -> tuple[list[str], list[str]]:
    """(neighbor texts, their kinds), K of each. mlm neighbors still hold marked words."""
    kinds = [cfg.kinds[i % len(cfg.kinds)] for i in range(cfg.k)]
    texts = [perturb(text, kind, rng_for(cfg.seed, sample_id, i), cfg) for i, kind in enumerate(kinds)]
    return texts, kinds


def make_pair_neighbors(text: str, image: bytes, sample_id: str,
                        cfg: NeighborConfig) -> tuple[list[str], list[bytes], list[str]]:
    """An image-text sample's K neighbors: (texts, encoded images, kinds)."""
    texts, text_kinds = make_neighbors(text, sample_id, cfg)
    if cfg.perturb == "image":
        texts = [text] * cfg.k
    images, kinds = [], []
    for i in range(cfg.k):
        if cfg.perturb == "text":
            images.append(image)
            kinds.append(text_kinds[i])
            continue
        kind = cfg.image_kinds[i % len(cfg.image_kinds)]
        images.append(perturb_image(image, kind, rng_for(cfg.seed, f"{sample_id}\0image", i)))
        kinds.append(kind if cfg.perturb == "image" else f"{kind}+{text_kinds[i]}")
    return texts, images, kinds
