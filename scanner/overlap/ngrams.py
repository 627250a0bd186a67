"""Exact word n-gram overlap between eval items and corpus documents, vectorised.

Normalisation (the same for both sides): lower case (Unicode), then a word is a maximal run of
Unicode letters and digits (`\\p{L}\\p{N}`); everything else, punctuation, underscores and
whitespace alike, only separates words. "Hello, World!" and "hello world" are the same two
words. An item of at least n words gives its n-grams (start positions 0 .. len - n); a shorter
one is a single "n-gram" of its whole length (it matches where it occurs whole).

Matching: the eval side is small, so its words get ids (a vocabulary) and its n-grams are kept
as id rows with a 64-bit polynomial hash each. A corpus batch is split into words by Arrow's C++
kernels (a byte translation table for ASCII, then a whitespace split; only tokens that still hold
non-ASCII characters take the Unicode regex, several times slower), its words looked up in the vocabulary
(`index_in`: a word that no item has can never be part of a match). Only windows that open with
the first two words of some indexed n-gram go on (a bitmap of those bigrams, one numpy pass over
the batch); their words are gathered, hashed, passed through a bitmap of the index's hashes and
a binary search, and compared word id by word id with the indexed n-gram, so a hash collision
never counts.

Result per (item, document): the item's n-gram start positions found in the document, and the
longest verbatim span, in words: the longest run of consecutive item n-grams found at
consecutive document positions (run + n - 1 words; an item's whole length for a short item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_N = 13
WORD_SEPARATORS = r"[^\p{L}\p{N}]+"
PRIME = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial hash
INVERSE = np.uint64(pow(int(PRIME), -1, 2**64))
MAX_BITMAP_BITS = 27  # a prefilter bitmap takes at most 16 MB
PREFIX = 4  # words of a window hashed for the first filter
CANDIDATES_PER_PASS = 1 << 19  # candidate windows gathered at once (x n words x 8 bytes)
# ASCII: upper case to lower, letters and digits kept, every other byte a space
ASCII_WORDS = bytes((b + 32 if 65 <= b <= 90 else b if (97 <= b <= 122 or 48 <= b <= 57) else 32) if b < 128 else b
                    for b in range(256))


def words_of(texts: pa.Array) -> pa.ListArray:
    """The normalised words of each text (see the module) by the Unicode regex alone: the
    definition word_ids implements faster. Empty strings mark leading and trailing separators."""
    return pc.split_pattern_regex(pc.utf8_lower(texts), pattern=WORD_SEPARATORS)


def word_ids(texts: pa.Array, vocabulary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Every text's words as vocabulary ids (-1: not in it), one text after another, and the
    index of the text each is from. ASCII bytes go through a byte table (upper to lower case, all
    but letters and digits to a space) and the result is split at whitespace; only the tokens
    that still hold non-ASCII characters (a few in most text) are split again by the Unicode
    regex, and their words spliced in by position (ids, not strings, are moved)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = texts.cast(pa.large_string())
    validity, offsets, data = texts.buffers()
    folded = pa.py_buffer(data.to_pybytes().translate(ASCII_WORDS)) if data is not None else data
    tokens = pc.ascii_split_whitespace(pa.Array.from_buffers(texts.type, len(texts), [validity, offsets, folded],
                                                             texts.null_count, texts.offset))
    flat, doc = tokens.flatten(), np.asarray(pc.list_parent_indices(tokens), dtype=np.int64)
    ids = _lookup(flat, vocabulary)  # the empty tokens of leading or trailing whitespace are -1: no word
    other = np.flatnonzero(~np.asarray(pc.string_is_ascii(flat)))
    if len(other) == 0:
        return ids, doc
    parts = words_of(pc.take(flat, other))
    part_words = parts.flatten()
    part_ids = _lookup(part_words, vocabulary)
    lengths = np.asarray(pc.list_value_length(parts), dtype=np.int64)
    real = np.asarray(pc.not_equal(part_words, ""))  # a separator at a token's edge is no word
    kept = np.add.reduceat(real, np.r_[0, np.cumsum(lengths)[:-1]])  # a split gives each token >= 1 string
    per_token = np.ones(len(flat), dtype=np.int64)
    per_token[other] = kept
    start = np.r_[0, np.cumsum(per_token)]
    out = np.repeat(ids, per_token)  # right for the plain tokens; the others' slots are overwritten
    part_ids = part_ids[real]
    within = np.arange(len(part_ids)) - np.repeat(np.cumsum(kept) - kept, kept)
    out[np.repeat(start[other], kept) + within] = part_ids
    return out, np.repeat(doc, per_token)


def _lookup(words: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.index_in(words, value_set=vocabulary), -1), dtype=np.int64)


class Bitmap:
    """A bit per key prefix (keys: uint64 hashes), ~64 bits per key: a key not in the set passes
    with probability ~1/64, a key in it always does."""

    def __init__(self, keys: np.ndarray):
        width = int(np.clip(np.ceil(np.log2(64 * max(len(keys), 1))), 16, MAX_BITMAP_BITS))
        self.shift = np.uint64(64 - width)
        word = keys >> self.shift
        self.bits = np.zeros(1 << (width - 3), dtype=np.uint8)
        np.bitwise_or.at(self.bits, word >> np.uint64(3), np.uint8(1) << (word & np.uint64(7)).astype(np.uint8))

    def maybe(self, keys: np.ndarray) -> np.ndarray:
        word = keys >> self.shift
        return (self.bits[word >> np.uint64(3)] >> (word & np.uint64(7)).astype(np.uint8)) & 1 == 1


def column_hashes(columns) -> np.ndarray:
    """The hash of each row of word ids, given column by column (k columns: sum_i (column_i + 1)
    * PRIME^(k - 1 - i), mod 2^64); the same for index rows and corpus windows."""
    h = None
    for column in columns:
        x = (column + 1).astype(np.uint64)
        h = x if h is None else h * PRIME + x
    return h


def row_hashes(rows: np.ndarray) -> np.ndarray:
    return column_hashes(rows.T)


@dataclass
class EvalIndex:
    """The eval items' n-grams, by window length."""

    n: int
    vocabulary: pa.Array  # the eval side's distinct words; a word's id is its position here
    item_ids: list[str]  # item number -> sample_id
    ngrams_per_item: np.ndarray  # item number -> its n-gram count
    lengths: dict[int, dict]  # window length -> {"hashes" (sorted), "rows" (id rows, same order),
    #                           "starts"/"items"/"positions": occurrences of row i in starts[i]:starts[i+1]}

    @classmethod
    def build(cls, item_ids: list[str], texts: list[str], n: int = DEFAULT_N) -> "EvalIndex":
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        texts_ = pa.array(texts, pa.string())
        words = words_of(texts_).flatten()
        vocabulary = pc.unique(pc.filter(words, pc.not_equal(words, ""))).sort()
        all_ids, doc = word_ids(texts_, vocabulary)  # the corpus's code path: the same words
        all_ids, doc = all_ids[all_ids >= 0], doc[all_ids >= 0]
        bounds = np.searchsorted(doc, np.arange(len(texts) + 1))
        by_length: dict[int, list[tuple[np.ndarray, int, int]]] = {}
        counts = np.zeros(len(texts), dtype=np.int64)
        for item in range(len(texts)):
            ids = all_ids[bounds[item]:bounds[item + 1]]
            if len(ids) == 0:
                continue
            length = min(n, len(ids))
            counts[item] = len(ids) - length + 1
            for pos in range(len(ids) - length + 1):
                by_length.setdefault(length, []).append((ids[pos:pos + length], item, pos))
        return cls(n=n, vocabulary=vocabulary, item_ids=list(item_ids), ngrams_per_item=counts,
                   lengths={length: _table(entries) for length, entries in by_length.items()})

    def match(self, texts: pa.Array) -> pl.DataFrame:
        """Every (item, document) pair with a match in this batch of texts: item, doc (the text's
        position in the batch), positions (sorted n-gram starts of the item), longest_span."""
        ids, doc = word_ids(texts, self.vocabulary)
        found = []
        for length, table in self.lengths.items():
            if len(ids) < length:
                continue
            m = len(ids) - length + 1
            k = min(PREFIX, length)  # only windows that open with the first k words of some indexed n-gram
            starts = np.flatnonzero(table["prefixes"].maybe(column_hashes(ids[i:m + i] for i in range(k))))
            for chunk in range(0, len(starts), CANDIDATES_PER_PASS):
                found.append(self._verify(ids, doc, starts[chunk:chunk + CANDIDATES_PER_PASS], length, table))
        return spans(pl.concat(found) if found else pl.DataFrame(schema=MATCH_SCHEMA))

    @staticmethod
    def _verify(ids: np.ndarray, doc: np.ndarray, starts: np.ndarray, length: int, table: dict) -> pl.DataFrame:
        """The candidate windows that are indexed n-grams, word id by word id, with their occurrences."""
        windows = ids[starts[:, None] + np.arange(length)]
        ok = (windows >= 0).all(axis=1) & (doc[starts] == doc[starts + length - 1])
        starts, windows = starts[ok], windows[ok]
        h = row_hashes(windows)
        maybe = table["bits"].maybe(h)
        starts, windows, h = starts[maybe], windows[maybe], h[maybe]
        lo = np.minimum(np.searchsorted(table["hashes"], h), len(table["hashes"]) - 1)
        hit = table["hashes"][lo] == h
        starts, windows, lo, h = starts[hit], windows[hit], lo[hit], h[hit]
        hi = np.searchsorted(table["hashes"], h, side="right")
        # every row with that hash (several only when hashes collide), then the exact comparison
        reps = hi - lo
        window = np.repeat(np.arange(len(starts)), reps)
        row = np.repeat(lo, reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
        same = (windows[window] == table["rows"][row]).all(axis=1)
        at, row = starts[window[same]], row[same]
        occ = table["starts"][row + 1] - table["starts"][row]
        first = np.repeat(table["starts"][row], occ) + (np.arange(occ.sum()) - np.repeat(np.cumsum(occ) - occ, occ))
        at = np.repeat(at, occ)
        return pl.DataFrame({"item": table["items"][first], "pos": table["positions"][first], "doc": doc[at],
                             "doc_pos": at, "length": np.full(len(at), length)}, schema=MATCH_SCHEMA)


MATCH_SCHEMA = {"item": pl.Int64, "pos": pl.Int64, "doc": pl.Int64, "doc_pos": pl.Int64, "length": pl.Int64}


def spans(matches: pl.DataFrame) -> pl.DataFrame:
    """Per (item, doc): the matched positions and the longest verbatim span in words."""
    runs = (matches.with_columns(diagonal=pl.col("doc_pos") - pl.col("pos"))
            .group_by("item", "doc", "diagonal", (pl.col("pos") - pl.col("pos").rank("ordinal").over(
                "item", "doc", "diagonal").cast(pl.Int64)).alias("run"))
            .agg(span=pl.len() + pl.col("length").first() - 1))
    longest = runs.group_by("item", "doc").agg(longest_span=pl.col("span").max())
    positions = matches.group_by("item", "doc").agg(positions=pl.col("pos").unique().sort())
    return positions.join(longest, on=["item", "doc"]).sort("item", "doc")


def _table(entries: list[tuple[np.ndarray, int, int]]) -> dict:
    """Distinct n-grams sorted by hash, each with its occurrences (item, position)."""
    rows = np.stack([e[0] for e in entries])
    distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    hashes = row_hashes(distinct)
    order = np.argsort(hashes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    occ_row = rank[inverse]
    by_row = np.argsort(occ_row, kind="stable")
    k = min(PREFIX, distinct.shape[1])
    prefixes = Bitmap(np.unique(column_hashes(distinct[:, :k].T)))
    return {"hashes": hashes[order], "rows": distinct[order], "bits": Bitmap(hashes), "prefixes": prefixes,
            "starts": np.r_[0, np.cumsum(np.bincount(occ_row, minlength=len(distinct)))],
            "items": np.array([e[1] for e in entries], dtype=np.int64)[by_row],
            "positions": np.array([e[2] for e in entries], dtype=np.int64)[by_row]}
