"""Text as arrays for compiled loops: a string array's UTF-8 bytes, code points decoded from them,
and per-code-point tables (letter or number, simple lower case), shared by the corpus overlap
(scanner.overlap.kernel) and the blind baseline's hashed n-grams (scanner.baseline.features).
"""

from __future__ import annotations

import os
import sys
import tempfile
import unicodedata
from functools import cache
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # spreads a word hash over the table's slots


def tables_file() -> Path:
    return Path(__file__).with_name("__pycache__") / f"unicode_tables-{unicodedata.unidata_version}.npz"


@cache
def unicode_tables(size: int = sys.maxunicode + 1) -> tuple[np.ndarray, np.ndarray]:
    """(is_word, lower) per code point: 1 for a letter or number, and its simple lower case. All
    of Unicode takes 0.4 s of Python, so it is kept beside the compiled loops' cache, per Unicode
    version; a smaller `size` serves text below it (the warm-up's)."""
    whole, kept = size == sys.maxunicode + 1, tables_file()
    if whole:
        try:
            with np.load(kept) as f:
                if len(f["is_word"]) == len(f["lower"]) == size:
                    return f["is_word"], f["lower"]
        except Exception:  # missing or damaged (a bad zip, a missing array): computed again
            pass
    is_word = np.zeros(size, dtype=np.uint8)
    lower = np.arange(size, dtype=np.int32)
    for cp in range(size):
        c = chr(cp)
        if unicodedata.category(c)[0] in "LN":
            is_word[cp] = 1
        low = c.lower()
        if low != c:
            lower[cp] = ord(low[0])  # "İ" -> "i̇": the simple mapping is its first code point
    if whole:
        try:  # another process may be writing it too: each writes its own file and renames it
            kept.parent.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=kept.parent, suffix=".npz", delete=False) as f:
                np.savez(f, is_word=is_word, lower=lower)
            os.replace(f.name, kept)
        except OSError:
            pass  # a read-only install: computed each time
    return is_word, lower


def text_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's UTF-8 bytes and its n + 1 offsets into them (a null is an empty text)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    _, offsets, data = texts.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[texts.offset:texts.offset + len(texts) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data, offsets


@numba.njit(cache=True, nogil=True)
def next_code_point(data, i):
    """The code point that starts with the non-ASCII byte i of valid UTF-8, and the byte after it.
    The callers read ASCII bytes themselves, in their loop: through a function returning a tuple
    the loop runs several times slower."""
    b = np.int64(data[i])
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), i + 2
    if b < 0xF0:
        return ((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F), i + 3
    return (((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12) | ((np.int64(data[i + 2]) & 0x3F) << 6)
            | (np.int64(data[i + 3]) & 0x3F)), i + 4
