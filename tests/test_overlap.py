"""Exact n-gram overlap (scanner.overlap): the vectorised matcher against a brute-force reference
on a corpus with planted eval items, and `scanner overlap` end to end on local Ray."""

import json
import re

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from scanner.overlap.ngrams import EvalIndex
from scanner.toy import english_passages


def brute_words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())  # letters and digits (the texts here are ASCII)


def brute_force(items: list[str], docs: list[str], n: int) -> dict:
    """{(item, doc): (sorted n-gram starts found, longest common word run if >= the n-gram length)}"""
    out = {}
    for i, item in enumerate(items):
        w = brute_words(item)
        length = min(n, len(w))
        grams = [tuple(w[p:p + length]) for p in range(len(w) - length + 1)]
        for d, doc in enumerate(docs):
            dw = brute_words(doc)
            in_doc = {tuple(dw[q:q + length]) for q in range(len(dw) - length + 1)}
            found = [p for p, g in enumerate(grams) if g in in_doc]
            if not found:
                continue
            best, prev = 0, [0] * (len(dw) + 1)  # longest common substring in words
            for a in range(1, len(w) + 1):
                cur = [0] * (len(dw) + 1)
                for b in range(1, len(dw) + 1):
                    if w[a - 1] == dw[b - 1]:
                        cur[b] = prev[b - 1] + 1
                        best = max(best, cur[b])
                prev = cur
            out[(i, d)] = (found, best)
    return out


def planted_corpus(seed: int = 0) -> tuple[list[str], list[str], dict]:
    """Eval items (English passages) and documents: clean random-word text, an item verbatim
    inside other text, the first half of an item, an item with every 20th word changed, an item
    re-cased and re-punctuated, a short item, and an item twice in one document."""
    rng = np.random.default_rng(seed)
    passages = english_passages(30, 120)
    order = rng.permutation(len(passages))
    items = [passages[i] for i in order[:30]] + ["Return the value", "A B C D E F G H I J K L M"]
    filler = [f"zq{k}" for k in range(500)]  # words no item has: clean text

    def noise(k: int) -> str:
        return " ".join(rng.choice(filler, k))

    docs, kinds = [], {}
    for _ in range(40):
        kinds[len(docs)] = "clean"
        docs.append(noise(int(rng.integers(20, 200))))
    for i in range(0, 6):
        kinds[len(docs)] = "verbatim"
        docs.append(f"{noise(30)} {items[i]} {noise(30)}")
    for i in range(6, 12):
        w = items[i].split()
        kinds[len(docs)] = "half"
        docs.append(f"{noise(10)} {' '.join(w[:len(w) // 2])} {noise(10)}")
    for i in range(12, 18):
        w = items[i].split()
        kinds[len(docs)] = "every 20th changed"
        docs.append(" ".join("zqchanged" if k % 20 == 19 else x for k, x in enumerate(w)))
    for i in range(18, 21):
        kinds[len(docs)] = "re-cased"
        docs.append(re.sub(r"\s+", " -- ", items[i].upper()) + "!!!")
    kinds[len(docs)] = "short item"
    docs.append(f"{noise(5)} return, THE value {noise(5)}")
    kinds[len(docs)] = "twice"
    docs.append(f"{items[21]} {noise(3)} {items[21]}")
    return items, docs, kinds


def as_dict(table: pl.DataFrame) -> dict:
    return {(r["item"], r["doc"]): (r["positions"], r["longest_span"]) for r in table.iter_rows(named=True)}


@pytest.mark.parametrize("n,prime", [(13, None), (5, None), (5, 1)])
def test_matches_equal_a_brute_force_reference_and_no_clean_document_is_flagged(n, prime, monkeypatch):
    if prime is not None:  # a hash that collides for any reordering of a window's words: exactness must hold
        monkeypatch.setattr("scanner.overlap.ngrams.PRIME", np.uint64(prime))
    items, docs, kinds = planted_corpus()
    index = EvalIndex.build([f"i{k}" for k in range(len(items))], items, n=n)
    if prime is not None:
        assert any(len(np.unique(t["hashes"])) < len(t["hashes"]) for t in index.lengths.values())
    # the corpus in uneven batches, with a missing text among them: positions are per batch
    got = {}
    for lo, hi in ((0, 17), (17, 50), (50, len(docs))):
        batch = pa.array(docs[lo:hi] + [None], pa.string())
        for (item, doc), value in as_dict(index.match(batch)).items():
            got[(item, lo + doc)] = value
    expected = brute_force(items, docs, n)
    assert got == expected
    flagged = {doc for _, doc in got}
    assert not any(kinds[d] == "clean" for d in flagged)
    assert all(d in flagged for d, k in kinds.items() if k != "clean")
    for d, k in kinds.items():
        (item, (positions, span)), *more = [(item, v) for (item, doc), v in got.items() if doc == d] or [(None, ([], 0))]
        if k == "verbatim":  # covered whole, in one span
            assert len(positions) == index.ngrams_per_item[item] and span == len(brute_words(items[item]))
        if k == "every 20th changed":  # 19 words (more once punctuation splits) stay whole between changes
            assert 0 < len(positions) < index.ngrams_per_item[item] and 19 <= span < len(brute_words(items[item]))


def test_index_rejects_bad_n_and_handles_items_without_words():
    with pytest.raises(ValueError, match="n must be at least 1"):
        EvalIndex.build(["a"], ["x"], n=0)
    index = EvalIndex.build(["a", "b"], ["!!! ...", "one two"], n=13)
    assert list(index.ngrams_per_item) == [0, 1]
    assert as_dict(index.match(pa.array(["so one two three"]))) == {(1, 0): ([0], 2)}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scanner_overlap_end_to_end_counts_every_row_and_resumes(tmp_path, ray_local, capfd):
    """Two corpus files in shards of 20 rows, one unreadable line: items.parquet equals the brute
    force per item; read = documents + quarantined; a rerun matches nothing again (nor indexes the
    items), and a shard whose record is gone is matched again alone."""
    from scanner.cli import main

    items, docs, kinds = planted_corpus()
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"id": f"i{k}", "text": t}) + "\n"
                                                 for k, t in enumerate(items))
                                         + "{not json\n" + json.dumps({"id": "i0", "text": "a second i0"}) + "\n")
    half = len(docs) // 2
    for name, part in (("a", range(half)), ("b", range(half, len(docs)))):
        lines = [json.dumps({"id": f"d{d}", "text": docs[d]}) for d in part]
        if name == "b":
            lines.insert(3, "{not json")
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    args = ["overlap", str(tmp_path / "eval.jsonl"), "--corpus", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
            "--out", str(tmp_path / "out"), "--shard-size", "20", "--actors", "2"]
    assert main(args) == 0, capfd.readouterr().err[-3000:]
    got = pl.read_parquet(tmp_path / "out" / "items.parquet")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["counts"]["corpus_rows_read"] == len(docs) + 1 and m["counts"]["corpus_rows_quarantined"] == 1
    assert m["counts"]["shards"] == 4
    # the eval side too: every row read is an item or quarantined with its reason
    assert (m["counts"]["eval_rows_read"], m["counts"]["eval_rows_quarantined"], got.height) == (
        len(items) + 2, 2, len(items))
    reasons = sorted(pl.read_parquet(tmp_path / "out" / "quarantine" / "eval_items.parquet")["reason"])
    assert reasons[0].startswith("duplicate id") and "JSON" in reasons[1], reasons
    expected = brute_force(items, docs, 13)
    words = [brute_words(t) for t in items]
    for row in got.iter_rows(named=True):
        k = int(row["sample_id"][1:])
        hits = {d: v for (i, d), v in expected.items() if i == k}
        ngrams = len(words[k]) - min(13, len(words[k])) + 1
        matched = len({p for found, _ in hits.values() for p in found})
        assert (row["ngrams"], row["matched"], row["n_docs"]) == (ngrams, matched, len(hits)), row
        assert row["longest_span"] == max((span for _, span in hits.values()), default=0)
        assert row["coverage"] == pytest.approx(matched / ngrams)
        assert row["doc_ids"] == sorted(f"d{d}" for d in hits)[:5]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "i0" in md  # a verbatim item is among the worst
    assert md.index("headline_shares.png") < md.index("## ") and (tmp_path / "out" / "headline_shares.png").is_file()

    capfd.readouterr()
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "4 done before, 0 to match" in err and "indexed" not in err, err[-2000:]  # nothing to index for
    assert pl.read_parquet(tmp_path / "out" / "items.parquet").equals(got)
    done = sorted((tmp_path / "out" / "done").iterdir())
    done[1].unlink()
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "3 done before, 1 to match" in err and "indexed" in err, err[-2000:]
    assert pl.read_parquet(tmp_path / "out" / "items.parquet").equals(got)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_overlap_refuses_a_changed_eval_set_in_the_same_folder(tmp_path, ray_local):
    from scanner.errors import InputError
    from scanner.overlap.run import run_overlap

    (tmp_path / "e.jsonl").write_text('{"text": "one two three four"}\n')
    (tmp_path / "c.jsonl").write_text('{"text": "zero one two three four five"}\n')
    m = run_overlap([str(tmp_path / "e.jsonl")], [str(tmp_path / "c.jsonl")], str(tmp_path / "out"), n=3,
                    progress=lambda s: None)
    assert m["counts"]["items_with_overlap"] == 1
    with pytest.raises(InputError, match="--shard-size must be at least 1"):  # refused before any work
        run_overlap([str(tmp_path / "e.jsonl")], [str(tmp_path / "c.jsonl")], str(tmp_path / "out2"), shard_rows=0,
                    progress=lambda s: None)
    assert not (tmp_path / "out2").exists()
    with pytest.raises(InputError, match="holds another run"):
        run_overlap([str(tmp_path / "e.jsonl")], [str(tmp_path / "c.jsonl")], str(tmp_path / "out"), n=4,
                    progress=lambda s: None)


def test_the_compiled_scan_splits_words_as_unicode_categories_say():
    import unicodedata

    from scanner.overlap.ngrams import split_words

    def reference(text: str) -> list[str]:  # letters and numbers, one code point at a time
        words, word = [], ""
        for c in text or "":
            if unicodedata.category(c)[0] in "LN":
                word += c.lower()[0]
            elif word:
                words, word = words + [word], ""
        return words + [word] if word else words

    texts = ["Hello, World!  it's 2024_v2 -- (x)", "“Café” NAÏVE—ok é", None, "  tabs\tand\nnewlines ", "",
             "İstanbul ΣΊΣΥΦΟΣ straße ½ ٣ 𝔘𝔫𝔦 日本語テキスト a\u0301b"]
    assert split_words(texts) == [reference(t) for t in texts]
    assert split_words(texts)[:5] == [["hello", "world", "it", "s", "2024", "v2", "x"], ["café", "naïve", "ok", "é"],
                                      [], ["tabs", "and", "newlines"], []]


def test_evaluate_puts_overlap_beside_the_scores_and_refuses_items_it_lacks(tmp_path):
    from scanner.errors import InputError
    from scanner.evaluate import overlap_evidence, overlap_items

    pl.DataFrame({"sample_id": ["a", "b", "c", "d"], "coverage": [1.0, 1.0, 0.2, 0.0], "longest_span": [40, 30, 14, 0],
                  "n_docs": [1, 2, 1, 0], "doc_ids": [["x"], ["x", "y"], ["z"], []]}).write_parquet(tmp_path / "items.parquet")
    dt = pl.DataFrame({"sample_id": ["a", "b", "c", "d"]})
    y = np.array([1, 1, 0, 0])
    o = overlap_evidence(dt, y, {"loss": np.array([0.9, 0.1, 0.8, 0.2])}, overlap_items(tmp_path), tmp_path)
    assert (o["whole_in_corpus"], o["any_overlap"], o["members_whole"]) == (2, 3, 2)
    assert [r["sample_id"] for r in o["non_members_with_overlap"]] == ["c"]
    assert o["auc"]["loss"] == {"vs_labels": 0.5, "vs_whole_in_corpus": 0.5}
    with pytest.raises(InputError, match="1 of 5 evaluated samples are not among its items"):
        overlap_evidence(pl.DataFrame({"sample_id": ["a", "b", "c", "d", "e"]}), np.r_[y, 0],
                         {"loss": np.zeros(5)}, overlap_items(tmp_path), tmp_path)
    with pytest.raises(InputError, match="no items.parquet"):
        overlap_items(tmp_path / "elsewhere")


def test_a_word_that_only_shares_a_hash_never_makes_a_match():
    """Word ids come from 64-bit hashes; a window that matches by ids counts only once its bytes
    spell the eval words. Simulated: the corpus word "zebra" given the id of the item's "brown"."""
    from scanner.overlap.ngrams import _Scanned

    item = "the quick brown fox jumps over the lazy dog"
    index = EvalIndex.build(["i"], [item], n=4)
    for text, counted in ((item, True), (item.replace("brown", "zebra"), False)):
        batch = _Scanned.of(pa.array([text]), index.vocabulary, index.filters)
        brown = index.vocabulary.words.index("brown")
        batch.ids[2] = brown  # what a collision of zebra's hash with brown's would give
        length, table = next(iter(index.lengths.items()))
        found = batch.verify(np.arange(0, 6), length, table)  # every window of the text
        assert sorted(found["pos"].to_list()) == ([0, 1, 2, 3, 4, 5] if counted else [3, 4, 5])


def test_two_vocabulary_words_with_one_hash_are_told_apart_by_their_bytes():
    from scanner.overlap import kernel

    words = ["alpha", "beta"]
    cps = np.frombuffer("".join(words).encode("utf-32-le"), dtype="<u4").astype(np.int32)
    word_at = np.array([0, 5, 9])
    h = kernel.word_hash(cps, 0, 5)
    keys, ids, shift, shared = (np.zeros(16, np.uint64), np.full(16, -1, np.int32), np.uint64(60),
                                np.zeros(16, np.uint8))
    first = (int(h) * int(kernel.FIBONACCI) % 2**64) >> 60
    for k, w in ((first, 0), ((first + 1) % 16, 1)):  # both words filed under alpha's hash
        keys[k], ids[k], shared[k] = h, w, 1
    data, offsets = kernel.text_buffers(pa.array(["Beta ALPHA gamma"]))
    _, starts, text_words = kernel.word_hashes(data, offsets, *kernel.unicode_tables())
    got = kernel.word_ids(data, offsets, np.full(3, h, np.uint64), starts, text_words, keys, ids, shift, shared, cps,
                          word_at, *kernel.unicode_tables())
    assert got.tolist() == [1, 0, kernel.NO_WORD]


def test_the_unicode_tables_kept_on_disk_are_the_ones_computed(tmp_path, monkeypatch):
    from scanner import unicode_text as kernel

    kept = tmp_path / "tables.npz"
    monkeypatch.setattr(kernel, "tables_file", lambda: kept)
    computed = kernel.unicode_tables.__wrapped__()  # no file yet: computed, then kept
    assert kept.exists()
    loaded = kernel.unicode_tables.__wrapped__()
    assert all((a == b).all() and a.dtype == b.dtype for a, b in zip(computed, loaded))
    assert loaded[0][ord("é")] == 1 and loaded[0][ord("_")] == 0 and loaded[1][ord("Σ")] == ord("σ")
    kept.write_bytes(b"not an npz")  # a damaged file is computed again, and replaced
    assert all((a == b).all() for a, b in zip(computed, kernel.unicode_tables.__wrapped__()))
    assert kept.stat().st_size > 1000


def test_the_vocabulary_is_the_same_when_two_words_share_a_hash(monkeypatch):
    from scanner.overlap import kernel
    from scanner.overlap.ngrams import Vocabulary

    texts = pa.array(["the cat sat on the mat", "The Mat, the hat"], pa.large_string())
    expected = Vocabulary.of(texts).words
    assert expected == ["cat", "hat", "mat", "on", "sat", "the"]
    monkeypatch.setattr(kernel, "hash_words", lambda cps, word_at: np.zeros(len(word_at) - 1, np.uint64))
    assert Vocabulary.of(texts).words == expected  # every word under one hash: told apart as strings
