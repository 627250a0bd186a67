"""Exact word n-gram overlap between eval items and corpus documents.

Normalisation (the same for both sides, scanner.overlap.kernel): a word is a maximal run of
Unicode letters and numbers (categories L* and N*), lower-cased code point by code point;
everything else, punctuation, underscores and whitespace alike, only separates words.
"Hello, World!" and "hello world" are the same two words. An item of at least n words gives its
n-grams (start positions 0 .. len - n); a shorter one is a single "n-gram" of its whole length
(it matches where it occurs whole).

Matching: the eval side is small, so its words get ids (a vocabulary) and its n-grams are kept
as id rows with a 64-bit polynomial hash each, a bitmap of the hashes per window length, and one
bitmap of every two ids that follow each other in some n-gram. A corpus batch goes through the
compiled passes (scanner.overlap.kernel): words, their vocabulary ids (a word no item has can
never be part of a match), and the windows whose every two neighbouring ids pass the pair
bitmap and whose hash passes its length's bitmap. Those candidates are looked up by hash
(binary search) and compared word id by word id with the indexed n-gram, and the windows that
match are compared byte by byte with the eval words, so no hash collision, of words or of
n-grams, ever counts.

Result per (item, document): the item's n-gram start positions found in the document, and the
longest verbatim span, in words: the longest run of consecutive item n-grams found at
consecutive document positions (run + n - 1 words; an item's whole length for a short item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from scanner.overlap import kernel

DEFAULT_N = 13
PRIME = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial hash
# The scan probes the pair bitmap at every word: small enough to stay in a core's L2 cache; the
# full one only for the rare windows whose every pair passes, so it may be large and selective.
PAIR_BITMAP = (8, 21)  # bits per key, at most 2^21 bits (256 KB)
FULL_BITMAP = (64, 27)  # at most 16 MB
CANDIDATES_PER_PASS = 1 << 19  # candidate windows verified at once (x n words x 4 bytes)


def split_words(texts: list[str]) -> list[list[str]]:
    """Each text's normalised words (see the module)."""
    data, offsets = kernel.text_buffers(pa.array(texts, pa.large_string()))
    cps, word_at, text_words = kernel.split_words(data, offsets, *kernel.unicode_tables())
    words = _strings(cps, word_at)
    return [words[a:b] for a, b in zip(text_words[:-1], text_words[1:])]


def _strings(cps: np.ndarray, word_at: np.ndarray, which: np.ndarray | None = None) -> list[str]:
    """Words as strings: all, or those numbered in `which`."""
    joined = cps.astype("<u4").tobytes().decode("utf-32-le")
    which = np.arange(len(word_at) - 1) if which is None else which
    return [joined[a:b] for a, b in zip(word_at[which].tolist(), word_at[which + 1].tolist())]


def ngram_counts(texts: list[str], n: int) -> np.ndarray:
    """Each text's n-gram count (as EvalIndex.build counts them), without an index."""
    data, offsets = kernel.text_buffers(pa.array(texts, pa.large_string()))
    _, _, text_words = kernel.word_hashes(data, offsets, *kernel.unicode_tables())
    return _counts(np.diff(text_words), n)


def _counts(words: np.ndarray, n: int) -> np.ndarray:
    """n-grams of texts of `words` words: len - n + 1; one for a text shorter than n; none for none."""
    return np.where(words > 0, words - np.minimum(words, n) + 1, 0)


class Bitmap:
    """A bit per key prefix (keys: uint64 hashes; repeats are sized as if distinct), `per_key` bits
    per key up to 2^max_bits: a key not in the set passes with probability ~1/per_key, a key in
    it always does. Probed in scanner.overlap.kernel."""

    def __init__(self, keys: np.ndarray, per_key: int, max_bits: int):
        width = int(np.clip(np.ceil(np.log2(per_key * max(len(keys), 1))), 16, max_bits))
        self.shift = np.uint64(64 - width)
        self.bits = np.zeros(1 << (width - 3), dtype=np.uint8)
        kernel.set_bits(self.bits, keys, self.shift)


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
class Vocabulary:
    """The eval side's distinct words, as the compiled scan looks them up: a word's id is its
    position in `words`."""

    words: list[str]
    code_points: np.ndarray  # every word's lower-cased code points, one after another
    word_at: np.ndarray  # word i is code_points[word_at[i]:word_at[i + 1]]
    table: tuple  # kernel.vocabulary_table: slot hashes, slot ids, shift, shared
    is_word: np.ndarray  # kernel.unicode_tables, shipped with the index so no worker builds them
    lower: np.ndarray

    @classmethod
    def of(cls, texts: pa.Array, tables: tuple | None = None) -> "Vocabulary":
        is_word, lower = tables or kernel.unicode_tables()
        cps, word_at, _ = kernel.split_words(*kernel.text_buffers(texts), is_word, lower)
        _, first, inverse = _unique(kernel.hash_words(cps, word_at))  # distinct words by hash, not as strings
        if kernel.same_words(cps, word_at, first[inverse]):
            words = sorted(_strings(cps, word_at, first))
        else:  # two distinct words share a 64-bit hash
            words = sorted(set(_strings(cps, word_at)))
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        code_points = np.frombuffer("".join(words).encode("utf-32-le"), dtype="<u4").astype(np.int32)
        word_at = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        return cls(words, code_points, word_at, kernel.vocabulary_table(code_points, word_at), is_word, lower)


@dataclass
class EvalIndex:
    """The eval items' n-grams, by window length."""

    n: int
    vocabulary: Vocabulary
    item_ids: list[str]  # item number -> sample_id
    ngrams_per_item: np.ndarray  # item number -> its n-gram count
    lengths: dict[int, dict]  # window length -> {"hashes" (sorted), "rows" (id rows, same order),
    #                           "starts"/"items"/"positions": occurrences of row i in starts[i]:starts[i+1]}
    filters: tuple  # the scan's window arguments (_filters): lengths and bitmaps

    @classmethod
    def build(cls, item_ids: list[str], texts: list[str], n: int = DEFAULT_N,
              tables: tuple | None = None) -> "EvalIndex":
        """`tables`: kernel.unicode_tables of a size that covers the texts and whatever is
        matched against them (default: all of Unicode)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        texts_ = pa.array(texts, pa.large_string())
        vocabulary = Vocabulary.of(texts_, tables)
        scanned = _Scanned.of(texts_, vocabulary, _filters({}))  # the corpus's code path: the same words
        ids, text_words = scanned.ids, scanned.text_words
        words = np.diff(text_words)
        window, counts = np.minimum(words, n), _counts(words, n)
        lengths = {}
        for length in sorted(set(window[words > 0].tolist()), reverse=True):
            items = np.flatnonzero((window == length) & (words > 0))
            per = counts[items]
            positions = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)
            starts = np.repeat(text_words[items], per) + positions
            lengths[length] = _table(ids[starts[:, None] + np.arange(length)], np.repeat(items, per), positions)
        return cls(n=n, vocabulary=vocabulary, item_ids=list(item_ids), ngrams_per_item=counts, lengths=lengths,
                   filters=_filters(lengths))

    def match(self, texts: pa.Array) -> pl.DataFrame:
        """Every (item, document) pair with a match in this batch of texts: item, doc (the text's
        position in the batch), positions (sorted n-gram starts of the item), longest_span."""
        batch = _Scanned.of(texts, self.vocabulary, self.filters)
        found = []
        for k, (length, table) in enumerate(self.lengths.items()):
            starts = batch.candidates[batch.kind == k]
            for chunk in range(0, len(starts), CANDIDATES_PER_PASS):
                found.append(batch.verify(starts[chunk:chunk + CANDIDATES_PER_PASS], length, table))
        return spans(pl.concat(found) if found else pl.DataFrame(schema=MATCH_SCHEMA))


@dataclass
class _Scanned:
    """A batch after the compiled passes (scanner.overlap.kernel)."""

    data: np.ndarray  # the texts' UTF-8 bytes
    offsets: np.ndarray
    vocabulary: Vocabulary
    starts: np.ndarray  # each word's first byte
    ids: np.ndarray  # each word's vocabulary id or kernel.NO_WORD
    text_words: np.ndarray  # each text's first word, and the end
    candidates: np.ndarray  # windows that passed the bitmaps: first word
    kind: np.ndarray  # and the index of their length in the filters

    @classmethod
    def of(cls, texts: pa.Array, v: Vocabulary, filters: tuple) -> "_Scanned":
        data, offsets = kernel.text_buffers(texts)
        hashes, starts, text_words = kernel.word_hashes(data, offsets, v.is_word, v.lower)
        ids = kernel.word_ids(data, offsets, hashes, starts, text_words, *v.table, v.code_points, v.word_at,
                              v.is_word, v.lower)
        return cls(data, offsets, v, starts, ids, text_words, *kernel.candidates(ids, text_words, PRIME, *filters))

    def verify(self, starts: np.ndarray, length: int, table: dict) -> pl.DataFrame:
        """The candidate windows that are indexed n-grams, word id by word id and then byte by
        byte, with their occurrences."""
        windows = self.ids[starts[:, None] + np.arange(length)]
        h = row_hashes(windows)
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
        v = self.vocabulary
        spelled = kernel.confirm_windows(self.data, self.offsets, self.starts, self.text_words, self.ids, at, length,
                                         v.code_points, v.word_at, v.is_word, v.lower)
        at, row = at[spelled], row[spelled]
        occ = table["starts"][row + 1] - table["starts"][row]
        first = np.repeat(table["starts"][row], occ) + (np.arange(occ.sum()) - np.repeat(np.cumsum(occ) - occ, occ))
        at = np.repeat(at, occ)
        return pl.DataFrame({"item": table["items"][first], "pos": table["positions"][first],
                             "doc": np.searchsorted(self.text_words, at, side="right") - 1, "doc_pos": at,
                             "length": np.full(len(at), length)}, schema=MATCH_SCHEMA)


def _filters(lengths: dict[int, dict]) -> tuple:
    """kernel.candidates' window arguments: the window lengths (in the order of `lengths`), the
    pair bitmap of all of them, and their full bitmaps laid end to end in one array, each with
    its start and shift."""
    sizes = np.array(list(lengths), dtype=np.int64)
    pairs = Bitmap(np.concatenate([kernel.pair_hashes(t["rows"]) for t in lengths.values()] or
                                  [np.zeros(0, np.uint64)]), *PAIR_BITMAP)
    maps = [t["bits"] for t in lengths.values()]
    at = np.cumsum([0] + [len(m.bits) for m in maps])[:-1].astype(np.int64)
    bits = np.concatenate([m.bits for m in maps]) if maps else np.zeros(0, np.uint8)
    shifts = np.array([m.shift for m in maps], dtype=np.uint64)
    return sizes, pairs.bits, pairs.shift, bits, at, shifts


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


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.unique(keys, return_index=True, return_inverse=True) by one sort (numpy's hashing
    version took 0.7 s for 10k items' 634k n-grams, this 0.05 s)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], order[new], inverse


def _table(rows: np.ndarray, items: np.ndarray, positions: np.ndarray) -> dict:
    """Distinct n-grams sorted by hash, each with its occurrences (item, position), and the
    bitmap of their hashes."""
    hashes, first, occ_row = _unique(row_hashes(rows))
    distinct = rows[first]
    if not (distinct[occ_row] == rows).all():  # two distinct n-grams share a hash: keep both, sorted by hash
        distinct, inverse = np.unique(rows, axis=0, return_inverse=True)
        hashes = row_hashes(distinct)
        order = np.argsort(hashes, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        distinct, hashes, occ_row = distinct[order], hashes[order], rank[inverse.reshape(-1)]
    by_row = np.argsort(occ_row, kind="stable")
    return {"hashes": hashes, "rows": distinct, "bits": Bitmap(hashes, *FULL_BITMAP),
            "starts": np.r_[0, np.cumsum(np.bincount(occ_row, minlength=len(distinct)))],
            "items": items[by_row].astype(np.int64), "positions": positions[by_row].astype(np.int64)}
