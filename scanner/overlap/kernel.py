"""The corpus side's inner loops, compiled with numba: three tight passes over a batch.

  1. word_hashes: one pass over the UTF-8 bytes: each word's hash and first byte;
  2. word_ids: each hash looked up in the vocabulary's table (NO_WORD: not in the vocabulary,
     so never part of a match);
  3. candidates: runs of known words whose neighbouring ids pass the pair bitmap; a window of
     such a run is kept only if its hash passes the full bitmap. scanner.overlap.ngrams verifies
     the candidates id by id, and confirm_windows compares the bytes of the windows that match
     with the vocabulary words: a hash collision never counts.

Why compiled, and why three passes: with Arrow and numpy kernels the same work is ~10 passes
over arrays as long as the batch has words, 15-22 MB/s per core. Fused into one loop, numba's
code ran at ~35 MB/s (the loop body grew past what LLVM keeps in registers); as three simple
loops it runs several times faster (bench/overlap_throughput.py).

Words (the normalisation of scanner.overlap.ngrams): a word is a maximal run of code points whose
Unicode category is a letter or a number (L*, N*; Python's unicodedata), each lower-cased by its
one-to-one (simple) lower-case mapping; everything else separates words.
"""

from __future__ import annotations

import numba
import numpy as np

from scanner.unicode_text import FIBONACCI, FNV_OFFSET, FNV_PRIME, text_buffers, unicode_tables  # noqa: F401 (kernel's API)
from scanner.unicode_text import next_code_point as _next_code_point

NO_WORD = -1


@numba.njit(cache=True, nogil=True)
def _ascii_fold(is_word, lower):
    """Per ASCII byte: its lower case if a letter or digit, else 0."""
    fold = np.zeros(128, dtype=np.int64)
    for b in range(128):
        if is_word[b]:
            fold[b] = lower[b]
    return fold


@numba.njit(cache=True, nogil=True)
def split_words(data, offsets, is_word, lower):
    """Every text's words as lower-cased code points: (code points, word offsets into them, each
    text's first word and the end: len(offsets) values)."""
    fold = _ascii_fold(is_word, lower)
    cps = np.empty(len(data), dtype=np.int32)  # a word has at most as many code points as bytes
    word_at = np.empty(len(data) + 1, dtype=np.int64)
    text_words = np.empty(len(offsets), dtype=np.int64)
    n_cps, n_words = 0, 0
    for t in range(len(offsets) - 1):
        text_words[t] = n_words
        i, end, inside = offsets[t], offsets[t + 1], False
        while i < end:
            b = data[i]
            if b < 128:
                low = fold[b]
                i += 1
            else:
                cp, i = _next_code_point(data, i)
                low = np.int64(lower[cp]) if is_word[cp] else np.int64(0)
            if low:
                if not inside:
                    word_at[n_words] = n_cps
                    n_words += 1
                    inside = True
                cps[n_cps] = low
                n_cps += 1
            else:
                inside = False
        word_at[n_words] = n_cps
    text_words[len(offsets) - 1] = n_words
    return cps[:n_cps].copy(), word_at[:n_words + 1].copy(), text_words


@numba.njit(cache=True, nogil=True)
def word_hash(cps, start, end):
    """FNV-1a over a word's lower-cased code points."""
    h = FNV_OFFSET
    for j in range(start, end):
        h = (h ^ np.uint64(cps[j])) * FNV_PRIME
    return h


@numba.njit(cache=True, nogil=True)
def hash_words(cps, word_at):
    """word_hash of every word (split_words' output)."""
    out = np.empty(len(word_at) - 1, dtype=np.uint64)
    for w in range(len(out)):
        out[w] = word_hash(cps, word_at[w], word_at[w + 1])
    return out


@numba.njit(cache=True, nogil=True)
def same_words(cps, word_at, other):
    """Whether every word w is spelled as word other[w]."""
    for w in range(len(other)):
        a, b, size = word_at[w], word_at[other[w]], word_at[w + 1] - word_at[w]
        if word_at[other[w] + 1] - b != size:
            return False
        for j in range(size):
            if cps[a + j] != cps[b + j]:
                return False
    return True


@numba.njit(cache=True, nogil=True)
def vocabulary_table(cps, word_at):
    """Open addressing over the vocabulary's words, at most half full: (slot hashes, slot word
    ids (NO_WORD: empty), shift: a hash's first slot is (hash * FIBONACCI) >> shift, shared: 1
    where two vocabulary words have that slot's hash, so a hit must compare the bytes)."""
    n = len(word_at) - 1
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    keys = np.zeros(1 << bits, dtype=np.uint64)
    ids = np.full(1 << bits, NO_WORD, dtype=np.int32)
    shared = np.zeros(1 << bits, dtype=np.uint8)
    shift = np.uint64(64 - bits)
    mask = np.uint64((1 << bits) - 1)
    for w in range(n):
        h = word_hash(cps, word_at[w], word_at[w + 1])
        s = (h * FIBONACCI) >> shift
        seen = False
        while ids[s] != NO_WORD:
            if keys[s] == h:  # every word of a shared hash is marked: the earlier ones here, this one below
                shared[s] = 1
                seen = True
            s = (s + np.uint64(1)) & mask
        keys[s] = h
        ids[s] = w
        shared[s] = 1 if seen else 0
    return keys, ids, shift, shared


@numba.njit(cache=True, nogil=True)
def word_hashes(data, offsets, is_word, lower):
    """Pass 1: every word's hash (word_hash of its lower-cased code points) and first byte, and
    each text's first word (and the end: len(offsets) values)."""
    fold = _ascii_fold(is_word, lower)
    hashes = np.empty(len(data) // 2 + len(offsets), dtype=np.uint64)  # a word and a separator take >= 2 bytes
    starts = np.empty(len(hashes), dtype=np.int64)
    text_words = np.empty(len(offsets), dtype=np.int64)
    n = 0
    for t in range(len(offsets) - 1):
        text_words[t] = n
        i, end = offsets[t], offsets[t + 1]
        h, inside = FNV_OFFSET, False
        while i < end:
            at = i
            b = data[i]
            if b < 128:
                low = fold[b]
                i += 1
            else:
                cp, i = _next_code_point(data, i)
                low = np.int64(lower[cp]) if is_word[cp] else np.int64(0)
            if low:
                if not inside:
                    starts[n] = at
                    inside = True
                h = (h ^ np.uint64(low)) * FNV_PRIME
            elif inside:
                hashes[n] = h
                n += 1
                h, inside = FNV_OFFSET, False
        if inside:
            hashes[n] = h
            n += 1
    text_words[len(offsets) - 1] = n
    return hashes[:n], starts[:n], text_words  # views: the untouched rest was never paged in


@numba.njit(cache=True, nogil=True)
def _same_word(data, start, end, vocab_cps, a, b, fold, is_word, lower):
    """Whether the word at byte `start` (its text ends at `end`) is vocab_cps[a:b]."""
    i = start
    for j in range(a, b):
        if i >= end:
            return False
        c = data[i]
        if c < 128:
            low = fold[c]
            i += 1
        else:
            cp, i = _next_code_point(data, i)
            low = np.int64(lower[cp]) if is_word[cp] else np.int64(0)
        if low != vocab_cps[j]:
            return False
    if i >= end:
        return True
    c = data[i]
    if c < 128:
        return fold[c] == 0
    cp, _ = _next_code_point(data, i)
    return is_word[cp] == 0  # the word goes on: longer than the vocabulary word


@numba.njit(cache=True, nogil=True)
def word_ids(data, offsets, hashes, starts, text_words, keys, slot_ids, shift, shared, vocab_cps, vocab_at, is_word,
             lower):
    """Pass 2: each word's vocabulary id by its hash, NO_WORD if it has none. Only a hash that
    two vocabulary words share is settled here by the bytes; any other hit is confirmed by
    confirm_windows for the windows that match (a corpus word that merely shares a vocabulary
    word's hash never makes a match count)."""
    fold = _ascii_fold(is_word, lower)
    ids = np.empty(len(hashes), dtype=np.int32)
    mask = np.uint64(len(keys) - 1)
    for t in range(len(offsets) - 1):
        for j in range(text_words[t], text_words[t + 1]):
            h = hashes[j]
            s = (h * FIBONACCI) >> shift
            w = NO_WORD
            while slot_ids[s] != NO_WORD:
                if keys[s] == h:
                    v = slot_ids[s]
                    if shared[s] == 0 or _same_word(data, starts[j], offsets[t + 1], vocab_cps, vocab_at[v],
                                                    vocab_at[v + 1], fold, is_word, lower):
                        w = v
                        break
                s = (s + np.uint64(1)) & mask
            ids[j] = w
    return ids


@numba.njit(cache=True, nogil=True)
def confirm_windows(data, offsets, starts, text_words, ids, firsts, length, vocab_cps, vocab_at, is_word, lower):
    """Per window (its first word, `length` words): whether every word's bytes spell the
    vocabulary word its id names."""
    fold = _ascii_fold(is_word, lower)
    ok = np.ones(len(firsts), dtype=np.bool_)
    for c in range(len(firsts)):
        text = np.searchsorted(text_words, firsts[c], side="right") - 1
        for j in range(firsts[c], firsts[c] + length):
            v = ids[j]
            if not _same_word(data, starts[j], offsets[text + 1], vocab_cps, vocab_at[v], vocab_at[v + 1], fold,
                              is_word, lower):
                ok[c] = False
                break
    return ok


@numba.njit(cache=True, nogil=True)
def set_bits(bits, keys, shift):
    """Sets each key's bit (scanner.overlap.ngrams.Bitmap; _maybe probes it)."""
    for key in keys:
        word = key >> shift
        bits[np.int64(word >> np.uint64(3))] |= np.uint8(1) << np.uint8(word & np.uint64(7))


@numba.njit(cache=True, nogil=True)
def _maybe(bits, at, shift, key):
    word = key >> shift
    return (bits[at + np.int64(word >> np.uint64(3))] >> (word & np.uint64(7))) & np.uint8(1) == 1


@numba.njit(cache=True, nogil=True)
def _pair_hash(a, b):
    """The key of two word ids in a row (the pair bitmap's; the top bits spread by FIBONACCI)."""
    return ((np.uint64(a) << np.uint64(32)) | np.uint64(np.int64(b) & 0xFFFFFFFF)) * FIBONACCI


@numba.njit(cache=True, nogil=True)
def pair_hashes(rows):
    """The keys of every two neighbouring ids in each row of an id matrix (the index side of the
    pair bitmap)."""
    width = rows.shape[1]
    out = np.empty(rows.shape[0] * max(width - 1, 0), dtype=np.uint64)
    n = 0
    for r in range(rows.shape[0]):
        for j in range(width - 1):
            out[n] = _pair_hash(rows[r, j], rows[r, j + 1])
            n += 1
    return out


@numba.njit(cache=True, nogil=True)
def candidates(ids, text_words, prime, lengths, pair_bits, pair_shift, bits, full_at, full_shift):
    """Pass 3: (first word, k) of every run of lengths[k] words inside one text whose
    neighbouring ids all pass the pair bitmap (every two words in a row of some indexed n-gram
    do) and whose window hash passes the full bitmap k (scanner.overlap.ngrams.Bitmap, bits[at[k]:]
    probed with shift[k]); the window hash is scanner.overlap.ngrams.column_hashes.

    Why pairs: a window of n words needs n - 1 pairs in a row to pass, so even when a third of
    a corpus's pairs pass (common words, or a bitmap near full) a chance window almost never
    does, and the loop does one probe of a small bitmap per word, without a branch on it."""
    shortest = lengths.min() if len(lengths) else np.int64(1) << 62
    cand_start = np.empty(1024, dtype=np.int64)
    cand_kind = np.empty(1024, dtype=np.int64)
    n_cand = 0
    for t in range(len(text_words) - 1):
        run = np.int64(0)  # words in a row ending here, in the vocabulary, each pair passing
        prev = np.int64(NO_WORD)
        for pos in range(text_words[t], text_words[t + 1]):
            w = np.int64(ids[pos])
            known = np.int64(w != NO_WORD)
            linked = np.int64(_maybe(pair_bits, 0, pair_shift, _pair_hash(prev, w))) & known & np.int64(prev != NO_WORD)
            run = run * linked + known
            prev = w
            if run < shortest:
                continue
            for k in range(len(lengths)):
                span = lengths[k]
                if run < span:
                    continue
                first = pos + 1 - span
                h = np.uint64(0)
                for j in range(first, pos + 1):
                    h = h * prime + np.uint64(ids[j] + 1)
                if not _maybe(bits, full_at[k], full_shift[k], h):
                    continue
                if n_cand == len(cand_start):
                    cand_start = np.concatenate((cand_start, np.empty(n_cand, dtype=np.int64)))
                    cand_kind = np.concatenate((cand_kind, np.empty(n_cand, dtype=np.int64)))
                cand_start[n_cand] = first
                cand_kind[n_cand] = k
                n_cand += 1
    return cand_start[:n_cand].copy(), cand_kind[:n_cand].copy()
