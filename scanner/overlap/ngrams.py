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
(`index_in`: a word that no item has can never be part of a match), and every window of a length
the index has is hashed at once in numpy from prefix sums (P is odd, so invertible mod 2^64).
A bitmap of the index's hash prefixes discards ~98% of windows before the binary search; the rest are
compared word id by word id with the indexed n-gram, so a hash collision never counts.

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
MAX_BITMAP_BITS = 27  # the hash prefilter of one window length takes at most 16 MB
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


def row_hashes(rows: np.ndarray) -> np.ndarray:
    """The hash of each row of ids: sum_k (row[k] + 1) * PRIME^(length - 1 - k), mod 2^64."""
    h = np.zeros(len(rows), dtype=np.uint64)
    for column in (rows.astype(np.uint64) + np.uint64(1)).T:
        h = h * PRIME + column
    return h


_POWERS = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]  # P^i and P^-i, grown on demand


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^0 .. P^n and P^0 .. P^-n (mod 2^64), cached in the process."""
    have = len(_POWERS[0])
    if have <= n:
        more = max(n + 1, 2 * have) - have
        for k, base in ((0, PRIME), (1, INVERSE)):
            tail = _POWERS[k][-1] * np.cumprod(np.full(more, base, dtype=np.uint64))
            _POWERS[k] = np.r_[_POWERS[k], tail]
    return _POWERS[0][:n + 1], _POWERS[1][:n + 1]


class WindowHasher:
    """row_hashes of every window of a sequence of ids, for any window length, from one prefix
    sum: S[i] = sum_{t<i} x[t] P^(N-1-t), so S[j+L] - S[j] = P^(N-j-L) * hash(window j of L)."""

    def __init__(self, ids: np.ndarray):
        x = ids.astype(np.uint64) + np.uint64(1)
        self.n = len(x)
        powers, self.inverse_powers = _powers(self.n)
        self.prefix = np.zeros(self.n + 1, dtype=np.uint64)
        np.cumsum(x * powers[self.n - 1::-1] if self.n else x, out=self.prefix[1:])

    def __call__(self, starts: np.ndarray, length: int) -> np.ndarray:
        return (self.prefix[starts + length] - self.prefix[starts]) * self.inverse_powers[self.n - starts - length]


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
        unknown = np.r_[0, np.cumsum(ids < 0)]
        hasher = WindowHasher(np.where(ids < 0, 0, ids))
        found = []
        for length, table in self.lengths.items():
            if len(ids) < length:
                continue
            starts = np.arange(len(ids) - length + 1)
            ok = (unknown[starts + length] == unknown[starts]) & (doc[starts] == doc[starts + length - 1])
            starts = starts[ok]
            h = hasher(starts, length)
            word = h >> np.uint64(table["shift"])
            maybe = (table["bits"][word >> np.uint64(3)] >> (word & np.uint64(7)).astype(np.uint8)) & 1 == 1
            starts, h = starts[maybe], h[maybe]
            lo = np.minimum(np.searchsorted(table["hashes"], h), len(table["hashes"]) - 1)
            hit = table["hashes"][lo] == h
            starts, lo, h = starts[hit], lo[hit], h[hit]
            hi = np.searchsorted(table["hashes"], h, side="right")
            # every candidate row (several only when hashes collide), then the exact comparison
            reps = hi - lo
            window = np.repeat(starts, reps)
            row = np.repeat(lo, reps) + (np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps))
            same = (ids[window[:, None] + np.arange(length)] == table["rows"][row]).all(axis=1)
            window, row = window[same], row[same]
            occ = table["starts"][row + 1] - table["starts"][row]
            first = np.repeat(table["starts"][row], occ) + (np.arange(occ.sum()) - np.repeat(np.cumsum(occ) - occ, occ))
            at = np.repeat(window, occ)
            found.append(pl.DataFrame({"item": table["items"][first], "pos": table["positions"][first],
                                       "doc": doc[at], "doc_pos": at, "length": np.full(len(at), length)}))
        return spans(pl.concat(found) if found else pl.DataFrame(schema=MATCH_SCHEMA))


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
    # a bit per hash prefix, ~64 bits per distinct n-gram: all but ~1.5% of windows stop here
    width = int(np.clip(np.ceil(np.log2(64 * len(distinct))), 16, MAX_BITMAP_BITS))
    word = hashes >> np.uint64(64 - width)
    bits = np.zeros(1 << (width - 3), dtype=np.uint8)
    np.bitwise_or.at(bits, word >> np.uint64(3), (np.uint8(1) << (word & np.uint64(7)).astype(np.uint8)))
    order = np.argsort(hashes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    occ_row = rank[inverse]
    by_row = np.argsort(occ_row, kind="stable")
    return {"hashes": hashes[order], "rows": distinct[order], "bits": bits, "shift": 64 - width,
            "starts": np.r_[0, np.cumsum(np.bincount(occ_row, minlength=len(distinct)))],
            "items": np.array([e[1] for e in entries], dtype=np.int64)[by_row],
            "positions": np.array([e[2] for e in entries], dtype=np.int64)[by_row]}
