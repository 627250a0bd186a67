"""Text features for the model-free baseline.

Everything computed here is *stateless* (a hash of each document on its own), so it can be
computed once for the whole corpus without leaking anything across folds. Whatever is learnt
from data (vocabulary, document frequencies, IDF, year cutoffs) lives in the estimators of
models.py and is fitted on training folds only.

The features are scikit-learn HashingVectorizer's, column for column (lower-cased; words: runs
of two or more word characters, its token pattern `\\b\\w\\w+\\b`, in 1- and 2-grams;
characters: 3- to 5-grams inside each whitespace-separated token padded with a space on both
sides, its `char_wb`; 2^20 columns by the MurmurHash3 of each n-gram's UTF-8 bytes), counted by
compiled loops over the texts' bytes: the vectorizer's Python analyzers took 57 s for 100,000
documents of 100 words on 2 cores, these loops a few seconds (bench/baseline_throughput.py).
One difference: str.lower() makes a word-final capital sigma "ς", these loops "σ".
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from scanner.unicode_text import next_code_point, text_buffers, unicode_tables

HASH_BITS = 20
HASH_FEATURES = 1 << HASH_BITS
CHAR_MIN, CHAR_MAX = 3, 5
SPACE = 32
DOTTED_I = 0x130
CHUNK_DOCS = 2048  # documents per compiled call: a thread's unit of work
# Years a text may plausibly mention; a fixed range so features never depend on today's date.
YEAR_MIN, YEAR_MAX = 1000, 2099


def max_year(text: str) -> int:
    """Largest plausible year mentioned in the text, 0 when there is none."""
    return int(_max_year(np.array([ord(c) for c in text], dtype=np.int64), len(text)))


@dataclass
class TextFeatures:
    """Per-document feature blocks, row-aligned with the input texts."""

    word: sp.csr_matrix  # hashed counts of word 1-2-grams
    char: sp.csr_matrix  # hashed counts of char 3-5-grams inside word boundaries
    year: np.ndarray  # (n, 1) largest plausible year, 0 if none

    def block(self, name: str):
        return getattr(self, name)


@cache
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word character, lower case, whitespace) per code point; `\\w` is a letter, a number or "_",
    whitespace is what str.split() splits on (all of it lies below U+3001)."""
    is_word, lower = unicode_tables()
    word = is_word.copy()
    word[ord("_")] = 1
    space = np.array([chr(c).isspace() for c in range(0x3001)], dtype=np.uint8)
    return word, lower, space


@numba.njit(cache=True, nogil=True)
def _decode(data, start, end, lower, cps, utf8, at):
    """The lower-cased code points of data[start:end] into cps (as str.lower() makes them, but for
    its context rule for a word-final capital sigma), their UTF-8 bytes into utf8, and where each
    code point's bytes start into at (at[n]: the end); returns n, how many."""
    n, i, b_at = 0, start, 0
    while i < end:
        b = data[i]
        if b < 128:
            cp = np.int64(b)
            i += 1
        else:
            cp, i = next_code_point(data, i)
        if cp == DOTTED_I:  # str.lower()'s one lower case of two code points: "i" and a combining dot
            cps[n], at[n], utf8[b_at] = 0x69, b_at, 0x69
            n, b_at, cp = n + 1, b_at + 1, 0x307
        else:
            cp = np.int64(lower[cp])
        cps[n], at[n] = cp, b_at
        if cp < 0x80:
            utf8[b_at] = cp
            b_at += 1
        elif cp < 0x800:
            utf8[b_at], utf8[b_at + 1] = 0xC0 | (cp >> 6), 0x80 | (cp & 0x3F)
            b_at += 2
        elif cp < 0x10000:
            utf8[b_at], utf8[b_at + 1], utf8[b_at + 2] = 0xE0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F)
            b_at += 3
        else:
            utf8[b_at], utf8[b_at + 1] = 0xF0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3F)
            utf8[b_at + 2], utf8[b_at + 3] = 0x80 | ((cp >> 6) & 0x3F), 0x80 | (cp & 0x3F)
            b_at += 4
        n += 1
    at[n] = b_at
    return n


MASK32 = 0xFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _mix(k):
    """MurmurHash3's scrambling of one 4-byte block (in 64-bit integers, kept to 32 bits)."""
    k = (k * 0xCC9E2D51) & MASK32
    k = ((k << 15) | (k >> 17)) & MASK32
    return (k * 0x1B873593) & MASK32


@numba.njit(cache=True, nogil=True)
def _column(buf, start, end):
    """HashingVectorizer's column of the n-gram whose UTF-8 bytes are buf[start:end]: the signed
    32-bit MurmurHash3 (x86, seed 0) of them, |h| mod HASH_FEATURES (and its rule for -2^31)."""
    h = np.int64(0)
    j = start
    while j + 4 <= end:
        h ^= _mix(np.int64(buf[j]) | (np.int64(buf[j + 1]) << 8) | (np.int64(buf[j + 2]) << 16) | (np.int64(buf[j + 3]) << 24))
        h = ((h << 13) | (h >> 19)) & MASK32
        h = (h * 5 + 0xE6546B64) & MASK32
        j += 4
    rest = end - j
    if rest:
        k = np.int64(buf[j])
        if rest >= 2:
            k |= np.int64(buf[j + 1]) << 8
        if rest == 3:
            k |= np.int64(buf[j + 2]) << 16
        h ^= _mix(k)
    h ^= end - start
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & MASK32
    h ^= h >> 16
    if h == 0x80000000:  # -2^31 as a signed hash
        return (0x7FFFFFFF - (HASH_FEATURES - 1)) % HASH_FEATURES
    return (h if h < 0x80000000 else (1 << 32) - h) % HASH_FEATURES


@numba.njit(cache=True, nogil=True)
def _is_digit(c):
    return 48 <= c <= 57


@numba.njit(cache=True, nogil=True)
def _max_year(cps, n):
    """The largest run of exactly four ASCII digits within YEAR_MIN..YEAR_MAX that is not part of a
    number written with separators (no "." or "," just before it, nor one followed by a digit just
    after it: "1,999" and "2.2019" are not years), or 0."""
    best, i = 0, 0
    while i < n:
        if not _is_digit(cps[i]):
            i += 1
            continue
        j = i
        while j < n and _is_digit(cps[j]):
            j += 1
        if j - i == 4 and (i == 0 or (cps[i - 1] != 46 and cps[i - 1] != 44)) and not (
                j + 1 < n and (cps[j] == 46 or cps[j] == 44) and _is_digit(cps[j + 1])):
            year = 0
            for c in range(i, j):
                year = 10 * year + (cps[c] - 48)
            if YEAR_MIN <= year <= YEAR_MAX:
                best = max(best, year)
        i = j
    return best


@numba.njit(cache=True, nogil=True)
def _word_grams(cps, n, utf8, at, is_word, gram, out, spans):
    """Columns of the word 1- and 2-grams of cps[:n] into out (`gram`: room for a bigram's bytes);
    spans[k] = (first token's start and end, second's or -1): where each came from. Returns how
    many."""
    k, i, prev_start, prev_end = 0, 0, -1, -1
    while i < n:
        if not is_word[cps[i]]:
            i += 1
            continue
        j = i
        while j < n and is_word[cps[j]]:
            j += 1
        if j - i >= 2:
            out[k] = _column(utf8, at[i], at[j])
            spans[k, 0], spans[k, 1], spans[k, 2], spans[k, 3] = i, j, -1, -1
            k += 1
            if prev_start >= 0:  # "previous this", as the vectorizer joins a bigram's tokens
                size = at[prev_end] - at[prev_start]
                gram[:size] = utf8[at[prev_start]:at[prev_end]]
                gram[size] = SPACE
                gram[size + 1:size + 1 + at[j] - at[i]] = utf8[at[i]:at[j]]
                out[k] = _column(gram, 0, size + 1 + at[j] - at[i])
                spans[k, 0], spans[k, 1], spans[k, 2], spans[k, 3] = prev_start, prev_end, i, j
                k += 1
            prev_start, prev_end = i, j
        i = j
    return k


@numba.njit(cache=True, nogil=True)
def _char_grams(cps, n, utf8, at, is_space, padded, padded_at, out):
    """Columns of the 3- to 5-grams of every whitespace-separated token of cps[:n], padded with
    a space on each side (every window of those lengths that fits: char_wb's n-grams)."""
    k, i = 0, 0
    while i < n:
        if cps[i] < len(is_space) and is_space[cps[i]]:
            i += 1
            continue
        j = i
        while j < n and not (cps[j] < len(is_space) and is_space[cps[j]]):
            j += 1
        length, size = j - i + 2, at[j] - at[i]  # code points and bytes of the token, unpadded
        padded[0], padded[size + 1] = SPACE, SPACE
        padded[1:size + 1] = utf8[at[i]:at[j]]
        padded_at[0] = 0
        for c in range(i, j + 1):
            padded_at[c - i + 1] = 1 + at[c] - at[i]
        padded_at[length] = size + 2
        for off in range(length):
            for g in range(CHAR_MIN, min(CHAR_MAX, length - off) + 1):
                out[k] = _column(padded, padded_at[off], padded_at[off + g])
                k += 1
        i = j
    return k


@numba.njit(cache=True, nogil=True)
def _count(cols, k, scratch, out_cols, out_counts, at):
    """Sorted distinct columns of cols[:k] and their counts, written from `at`; returns the end.
    Columns have HASH_BITS bits: two counting-sort passes of half of them each (numba's np.sort
    of a document's ~1,800 columns took 80 us; this takes a few)."""
    half = HASH_BITS // 2
    buckets = np.empty(1 << half, dtype=np.int64)
    src, dst = cols, scratch
    for shift in (0, half):
        buckets[:] = 0
        for j in range(k):
            buckets[(src[j] >> shift) & ((1 << half) - 1)] += 1
        total = 0
        for b in range(len(buckets)):
            buckets[b], total = total, total + buckets[b]
        for j in range(k):
            b = (src[j] >> shift) & ((1 << half) - 1)
            dst[buckets[b]] = src[j]
            buckets[b] += 1
        src, dst = dst, src
    j = 0
    while j < k:  # after an even number of passes the sorted columns are back in cols
        c, run = cols[j], 0
        while j < k and cols[j] == c:
            j += 1
            run += 1
        out_cols[at], out_counts[at] = c, run
        at += 1
    return at


@numba.njit(cache=True, nogil=True)
def _hash_chunk(data, offsets, first, last, is_word, lower, is_space, word_ptr, word_cols, word_counts,
                char_ptr, char_cols, char_counts, years):
    """Word and char n-gram counts of texts first..last-1. With empty column arrays, only each
    text's number of distinct columns, into word_ptr[t + 1] and char_ptr[t + 1] (the first pass);
    else the columns and counts at word_ptr[t] and char_ptr[t], and each text's largest year."""
    longest = 0
    for t in range(first, last):
        longest = max(longest, offsets[t + 1] - offsets[t])
    cps, at = np.empty(longest + 1, dtype=np.int64), np.empty(longest + 2, dtype=np.int64)
    utf8 = np.empty(4 * longest + 4, dtype=np.uint8)  # lower-casing may lengthen a code point's bytes
    gram, padded, padded_at = np.empty(len(utf8) + 1, np.uint8), np.empty(len(utf8) + 2, np.uint8), np.empty(longest + 3, np.int64)
    word_tmp = np.empty(longest + 1, dtype=np.int64)
    spans = np.empty((longest + 1, 4), dtype=np.int64)
    char_tmp = np.empty(9 * longest + 9, dtype=np.int64)  # <= 3 per padded code point, tokens <= code points
    scratch = np.empty(len(char_tmp), dtype=np.int64)
    counting = len(word_cols) == 0
    if counting:  # one text's worth, reused
        word_cols, word_counts = np.empty(longest + 1, dtype=np.int32), np.empty(longest + 1, dtype=np.float32)
        char_cols, char_counts = np.empty(len(char_tmp), dtype=np.int32), np.empty(len(char_tmp), dtype=np.float32)
    for t in range(first, last):
        n = _decode(data, offsets[t], offsets[t + 1], lower, cps, utf8, at)
        k_word = _word_grams(cps, n, utf8, at, is_word, gram, word_tmp, spans)
        k_char = _char_grams(cps, n, utf8, at, is_space, padded, padded_at, char_tmp)
        if counting:
            word_ptr[t + 1] = _count(word_tmp, k_word, scratch, word_cols, word_counts, 0)
            char_ptr[t + 1] = _count(char_tmp, k_char, scratch, char_cols, char_counts, 0)
        else:
            _count(word_tmp, k_word, scratch, word_cols, word_counts, word_ptr[t])
            _count(char_tmp, k_char, scratch, char_cols, char_counts, char_ptr[t])
            years[t] = _max_year(cps, n)


def compute_features(texts: list[str], n_jobs: int | None = None) -> TextFeatures:
    """Stateless, so chunks of texts are hashed in parallel threads (the compiled loops release
    the GIL). Two passes, the first only counting each text's columns, so the matrices are
    written in place: no chunk's copy is ever concatenated (on 100k texts that copying took longer
    than the hashing)."""
    n = len(texts)
    data, offsets = text_buffers(pa.array(texts, pa.large_string()))
    tables = _tables()
    word_ptr, char_ptr, years = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64), np.zeros(n)
    none_i, none_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    starts = range(0, n, CHUNK_DOCS)
    with ThreadPoolExecutor(max(1, min(n_jobs or len(os.sched_getaffinity(0)), len(starts)))) as pool:
        def each_chunk(*arrays):
            list(pool.map(lambda s: _hash_chunk(data, offsets, s, min(s + CHUNK_DOCS, n), *tables, *arrays), starts))

        each_chunk(word_ptr, none_i, none_f, char_ptr, none_i, none_f, years)
        np.cumsum(word_ptr, out=word_ptr)
        np.cumsum(char_ptr, out=char_ptr)
        word = (np.empty(word_ptr[-1], np.int32), np.empty(word_ptr[-1], np.float32))
        char = (np.empty(char_ptr[-1], np.int32), np.empty(char_ptr[-1], np.float32))
        each_chunk(word_ptr, *word, char_ptr, *char, years)
    return TextFeatures(
        word=sp.csr_matrix((word[1], word[0], word_ptr), shape=(n, HASH_FEATURES)),
        char=sp.csr_matrix((char[1], char[0], char_ptr), shape=(n, HASH_FEATURES)),
        year=years.reshape(-1, 1),
    )


@numba.njit(cache=True, nogil=True)
def _word_gram_spans(data, offsets, is_word, lower):
    """Every word n-gram of every text: (text, column, first token's start and end, second's or -1),
    in code points of its lower-cased text."""
    longest = 0
    for t in range(len(offsets) - 1):
        longest = max(longest, offsets[t + 1] - offsets[t])
    cps, at = np.empty(longest + 1, dtype=np.int64), np.empty(longest + 2, dtype=np.int64)
    utf8 = np.empty(4 * longest + 4, dtype=np.uint8)
    gram = np.empty(len(utf8) + 1, dtype=np.uint8)
    cols = np.empty(longest + 1, dtype=np.int64)
    spans = np.empty((longest + 1, 4), dtype=np.int64)
    rows = []
    for t in range(len(offsets) - 1):
        n = _decode(data, offsets[t], offsets[t + 1], lower, cps, utf8, at)
        for g in range(_word_grams(cps, n, utf8, at, is_word, gram, cols, spans)):
            rows.append((t, cols[g], spans[g, 0], spans[g, 1], spans[g, 2], spans[g, 3]))
    return rows


def word_ngram_names(texts: list[str], word: sp.csr_matrix, columns: set[int], limit_per_column: int = 3,
                     documents_per_column: int = 50) -> dict[int, list[str]]:
    """Readable n-grams for hashed word columns, for reports ("which words leak?"): the n-grams
    that land in each column in up to `documents_per_column` of the documents that have it
    (`word`: the texts' word block), most frequent first."""
    names: dict[int, list[str]] = {c: [] for c in columns}
    wanted = np.array(sorted(columns), dtype=np.int64)
    if not len(wanted):
        return names
    holders = word[:, wanted].tocsc()
    docs = sorted({int(d) for j in range(len(wanted))
                   for d in holders.indices[holders.indptr[j]:holders.indptr[j + 1]][:documents_per_column]})
    if not docs:
        return names
    chosen = [texts[d] for d in docs]
    word_chars, lower, _ = _tables()
    data, offsets = text_buffers(pa.array(chosen, pa.large_string()))
    seen: dict[int, dict[str, int]] = {c: {} for c in columns}
    for t, col, a, b, c, d in _word_gram_spans(data, offsets, word_chars, lower):
        if col in seen:  # spans count the lower-cased text's code points
            text = chosen[t].lower()
            gram = text[a:b] if c < 0 else f"{text[a:b]} {text[c:d]}"
            seen[col][gram] = seen[col].get(gram, 0) + 1
    for col, grams in seen.items():
        names[col] = [g for g, _ in sorted(grams.items(), key=lambda kv: (-kv[1], kv[0]))[:limit_per_column]]
    return names
