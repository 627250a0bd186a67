import json
import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanner.corpus import Columns, CorpusError, read_corpus, stable_id


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def reasons(corpus):
    return dict(zip(corpus.quarantine["row"].to_list(), corpus.quarantine["reason"].to_list()))


def assert_nothing_lost(corpus, n_rows_per_file):
    """Every row of every file is kept or quarantined, exactly once."""
    c = corpus.counts
    assert c["read"] == c["kept"] + c["quarantined"] == sum(n_rows_per_file.values())
    seen = corpus.samples.select("file", "row").vstack(corpus.quarantine.select("file", "row"))
    assert seen.n_unique() == seen.height
    for f, n in n_rows_per_file.items():
        assert sorted(seen.filter(pl.col("file") == f)["row"].to_list()) == list(range(1, n + 1))


def test_reads_each_format_with_defaults(tmp_path):
    rows = [{"text": f"passage number {i}", "label": i % 2} for i in range(6)]
    jl = write_jsonl(tmp_path / "a.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    (tmp_path / "c.csv").write_text("text,label\n" + "".join(f"csv passage {i},{i % 2}\n" for i in range(4)))
    (tmp_path / "d.tsv").write_text("input\tlabel\n" + "".join(f"tsv passage {i}\t{i % 2}\n" for i in range(3)))
    corpus = read_corpus([str(tmp_path)])
    assert corpus.counts["kept"] == 6 + 6 + 4 + 3
    assert corpus.counts["quarantined"] == 0
    by_source = dict(corpus.samples.group_by("source").len().iter_rows())
    assert by_source == {"a.jsonl": 6, "b.parquet": 6, "c.csv": 4, "d.tsv": 3}
    assert corpus.samples["label"].dtype == pl.Int8
    assert corpus.samples.filter(pl.col("source") == "a.jsonl")["label"].to_list() == [0, 1, 0, 1, 0, 1]
    # the same file twice (a file and a glob naming it) is read once
    assert read_corpus([jl, str(tmp_path / "*.jsonl")]).counts["read"] == 6


def test_hf_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input": ["one text", "two texts", "three"], "label": [1, 0, 1]})
    ds.save_to_disk(str(tmp_path / "single"))
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    dd.save_to_disk(str(tmp_path / "splits"))
    single = read_corpus([str(tmp_path / "single")])
    assert single.samples["text"].to_list() == ["one text", "two texts", "three"]
    assert single.samples["label"].to_list() == [1, 0, 1]
    both = read_corpus([str(tmp_path / "splits")])
    assert both.counts["kept"] == 4
    assert {s.split(os.sep)[0] for s in both.samples["source"]} == {"train", "test"}


def test_column_mapping_and_explicit_ids(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"body": "first doc", "is_member": 1, "doc": "d1", "origin": "web"},
        {"body": "second doc", "is_member": 0, "doc": 7, "origin": "books"},
    ])
    corpus = read_corpus([path], Columns(text="body", label="is_member", id="doc", source="origin"))
    assert corpus.samples["sample_id"].to_list() == ["d1", "7"]
    assert corpus.samples["source"].to_list() == ["web", "books"]
    assert corpus.samples["label"].to_list() == [1, 0]


def test_missing_text_column_is_an_error_naming_the_file(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"content": "a", "label": 1}])
    with pytest.raises(CorpusError, match=r"x\.jsonl.*no text column.*--text-col"):
        read_corpus([path])
    pq.write_table(pa.Table.from_pylist([{"text": "a"}]), tmp_path / "y.parquet")
    with pytest.raises(CorpusError, match=r"y\.parquet: no text column 'body'"):
        read_corpus([str(tmp_path / "y.parquet")], Columns(text="body"))


@pytest.mark.parametrize("bad", ["yes", "1", 2, -1, 0.5, True, None, [1]])
def test_bad_label_is_an_error_naming_file_row_and_value(tmp_path, bad):
    path = write_jsonl(tmp_path / "labels.jsonl", [{"text": "fine", "label": 1}, {"text": "bad", "label": bad}])
    with pytest.raises(CorpusError) as err:
        read_corpus([path])
    msg = str(err.value)
    assert "labels.jsonl row 2" in msg and repr(bad) in msg and "1 = member" in msg


def test_csv_labels_must_read_0_or_1(tmp_path):
    (tmp_path / "l.csv").write_text("text,label\nok,1\nok too,0\nbad,member\n")
    with pytest.raises(CorpusError, match=r"l\.csv row 3: label column 'label' holds 'member'"):
        read_corpus([str(tmp_path / "l.csv")])
    (tmp_path / "e.csv").write_text("text,label\nok,1\nno label,\n")
    with pytest.raises(CorpusError, match=r"e\.csv row 2"):
        read_corpus([str(tmp_path / "e.csv")])


def test_parquet_float_labels_0_1_are_accepted_but_strings_are_not(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, 0.0]}), tmp_path / "f.parquet")
    assert read_corpus([str(tmp_path / "f.parquet")]).samples["label"].to_list() == [1, 0]
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["1", "0"]}), tmp_path / "s.parquet")
    with pytest.raises(CorpusError, match=r"s\.parquet row 1: .*'1' \(str\)"):
        read_corpus([str(tmp_path / "s.parquet")])


def test_bad_jsonl_rows_are_quarantined_with_reasons(tmp_path):
    path = tmp_path / "messy.jsonl"
    lines = [
        json.dumps({"text": "good one", "label": 1}).encode(),  # 1
        json.dumps({"label": 1}).encode(),  # 2 missing text
        json.dumps({"text": "", "label": 0}).encode(),  # 3 empty
        json.dumps({"text": "  \n\t", "label": 0}).encode(),  # 4 whitespace only
        json.dumps({"text": 42, "label": 0}).encode(),  # 5 not a string
        json.dumps({"text": ["a"], "label": 0}).encode(),  # 6 not a string
        b'{"text": "caf\xe9 latin-1", "label": 1}',  # 7 invalid UTF-8
        b'{"text": "unterminated',  # 8 invalid JSON
        b"[1, 2]",  # 9 not an object
        b"",  # 10 blank line
        json.dumps({"text": "good one", "label": 1}).encode(),  # 11 duplicate (same source + text)
        json.dumps({"text": "lone \udc80 surrogate", "label": 1}).encode(),  # 12 not valid Unicode
        json.dumps({"text": "good two", "label": 0}).encode(),  # 13
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    corpus = read_corpus([str(path)])
    assert corpus.samples["row"].to_list() == [1, 13]
    r = reasons(corpus)
    assert r[2] == "missing text"
    assert r[3] == r[4] == "empty text"
    assert r[5] == "text is not a string: int" and r[6] == "text is not a string: list"
    assert r[7].startswith("invalid UTF-8")
    assert r[8].startswith("invalid JSON")
    assert r[9] == "not a JSON object"
    assert r[10] == "blank line"
    assert r[11] == f"duplicate id: first seen at {path} row 1"
    assert r[12] == "invalid UTF-8 in text"
    assert_nothing_lost(corpus, {str(path): 13})
    assert corpus.counts["quarantined_by_reason"]["duplicate id"] == 1


def test_bad_csv_and_parquet_rows_are_quarantined(tmp_path):
    csv_path = tmp_path / "messy.csv"
    csv_path.write_bytes(b'id,text,label\n1,ok,1\n2,,0\n3,"multi\nline",0\n4,bad \xff byte,1\n5,too,many,1\n1,dup id,0\n')
    pq_path = tmp_path / "messy.parquet"
    pq.write_table(pa.table({
        "id": ["a", "b", "c", "d"],
        "text": pa.array([b"fine", b"\xff\xfe", None, b"also fine"], type=pa.binary()),
        "label": [1, 0, 1, 0],
    }), pq_path)
    corpus = read_corpus([str(csv_path), str(pq_path)])
    kept = corpus.samples.select("file", "row", "text").rows()
    assert kept == [(str(csv_path), 1, "ok"), (str(csv_path), 3, "multi\nline"),
                    (str(pq_path), 1, "fine"), (str(pq_path), 4, "also fine")]
    q = {(f.rsplit(".", 1)[1], r): reason for f, r, reason in corpus.quarantine.select("file", "row", "reason").rows()}
    assert q[("csv", 2)] == "empty text"
    assert q[("csv", 4)] == "invalid UTF-8 in text"
    assert q[("csv", 5)] == "malformed CSV: 4 fields, header has 3"
    assert q[("csv", 6)] == f"duplicate id: first seen at {csv_path} row 1"
    assert q[("parquet", 2)] == "invalid UTF-8 in text"
    assert q[("parquet", 3)] == "missing text"
    assert_nothing_lost(corpus, {str(csv_path): 6, str(pq_path): 4})


def test_duplicate_ids_across_files_and_bad_ids(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "t1", "label": 1}, {"id": True, "text": "t2", "label": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "other", "label": 0}, {"text": "no id", "label": 0}])
    corpus = read_corpus([a, b], Columns(id="id"))
    q = corpus.quarantine.select("file", "row", "reason").rows()
    assert q == [(a, 2, "id is not a string or integer: True"),
                 (b, 1, f"duplicate id: first seen at {a} row 1"),
                 (b, 2, "missing id in column 'id'")]
    assert_nothing_lost(corpus, {a: 2, b: 2})


def test_unreadable_inputs_are_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus([str(tmp_path / "nope.jsonl")])
    with pytest.raises(CorpusError, match="matches no file"):
        read_corpus([str(tmp_path / "*.parquet")])
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(CorpusError, match=r"notes\.docx: unsupported file type"):
        read_corpus([str(tmp_path / "notes.docx")])
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"broken\.parquet: cannot be read as parquet"):
        read_corpus([str(tmp_path / "broken.parquet")])
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(CorpusError, match=r"broken\.jsonl\.gz: cannot be read as jsonl"):
        read_corpus([str(tmp_path / "broken.jsonl.gz")])


def test_labelled_refuses_unlabelled_rows(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "no label here"}])
    corpus = read_corpus([path])
    assert corpus.samples["label"].to_list() == [None]
    with pytest.raises(CorpusError, match=r"1 of 1 samples have no label.*u\.jsonl"):
        corpus.labelled()


def test_stable_ids_do_not_depend_on_python_hash_seed():
    code = "from scanner.corpus import stable_id; print(stable_id('src.jsonl', 'some text'))"
    outs = {
        subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {stable_id("src.jsonl", "some text")}


TRICKY_TEXTS = ["ok", None, "", "   ", "\u00a0\u2003\u3000", "\x1c\x1f\x85", "\u200b", " x ", "caf\u00e9", "ok",
                "\t\n", "line\u2028two"]


@pytest.mark.parametrize("layout", ["string ids", "int ids", "no ids", "explicit id col", "label and source"])
def test_parquet_is_validated_by_columns_exactly_as_row_by_row(tmp_path, layout):
    """The column path (plain Arrow types) keeps, rejects and words everything as the row path."""
    from scanner.corpus import RowValidator
    from scanner.readers import columns_of, records
    from scanner.shards import plan_file
    from scanner.inputs import list_inputs

    n = len(TRICKY_TEXTS)
    data = {"text": TRICKY_TEXTS}
    columns = Columns(label=None)
    if layout == "string ids":
        data["id"] = ["a", "b", None, "d", "e", "", "g", "a", "i", "j", "k", "l"]  # "a" twice, a null, an ""
    if layout == "int ids":
        data["id"] = [1, 2, 3, 4, None, 6, 7, 8, 9, 1, 11, 12]
    if layout == "explicit id col":
        data["key"] = ["a", None, "c", "d", "e", "f", "", "h", "i", "j", "k", "l"]
        columns = Columns(label=None, id="key")
    if layout == "label and source":
        data["label"] = [1, 0] * (n // 2)
        data["where"] = ["web", None, "", "books"] * (n // 4)
        columns = Columns(label="label", source="where")
    pq.write_table(pa.table(data), tmp_path / "d.parquet", row_group_size=5)
    shards = [s for f in list_inputs([str(tmp_path / "d.parquet")]) for s in plan_file(f, 7)]  # two shards
    by_columns, by_rows = RowValidator(columns), RowValidator(columns)
    for shard in shards:
        assert by_columns.add(shard) == by_rows._add_rows(shard, columns_of(shard), records(shard)) == shard.rows
    a, b = by_columns.corpus(["d"]), by_rows.corpus(["d"])
    assert a.samples.equals(b.samples) and a.quarantine.equals(b.quarantine)
    assert a.quarantine.height >= 4 and a.samples.height + a.quarantine.height == n
    assert len(by_columns.frames) == len(shards) == 2  # one frame per shard: the column path ran


def test_parquet_columns_of_other_types_take_the_row_path_with_its_errors(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b"], "id": [1.5, None]}), tmp_path / "f.parquet")
    c = read_corpus([str(tmp_path / "f.parquet")], Columns(label=None))
    assert c.quarantine["reason"].to_list() == ["id is not a string or integer: 1.5"] and c.samples.height == 1
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1, 7]}), tmp_path / "g.parquet")
    with pytest.raises(CorpusError, match=r"g.parquet row 2: label column 'label' holds 7"):
        read_corpus([str(tmp_path / "g.parquet")])


def test_image_column_in_every_form_and_bad_images_quarantined(tmp_path):
    """--image-col: bytes (Parquet), an HF Image struct, a relative or absolute path (JSON lines,
    CSV); missing, unreadable, undecodable and truncated images are quarantined with a reason."""
    from PIL import Image

    from scanner.images import encode

    good = encode(Image.new("RGB", (12, 9), (200, 30, 40)))
    jpeg = encode(Image.new("RGB", (16, 16), (0, 90, 200)), "JPEG", quality=50)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(good)
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image at all")
    pq.write_table(pa.table({
        "text": ["red", "blue", "same caption", "same caption", "no image", "junk", "cut"],
        "label": [1, 0, 1, 0, 1, 0, 1],
        "image": [good, jpeg, good, jpeg, None, b"\x89PNG nope", jpeg[: len(jpeg) // 2]]}), tmp_path / "b.parquet")
    hf = pa.array([{"bytes": good, "path": None}, {"bytes": None, "path": str(tmp_path / "img" / "a.png")}],
                  pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"text": ["hf bytes", "hf path"], "label": [1, 0], "image": hf}), tmp_path / "c.parquet")
    write_jsonl(tmp_path / "d.jsonl", [{"text": "relative", "label": 1, "image": "img/a.png"},
                                        {"text": "absolute", "label": 0, "image": str(tmp_path / "img" / "a.png")},
                                        {"text": "gone", "label": 1, "image": "img/missing.png"},
                                        {"text": "garbage", "label": 0, "image": "img/bad.png"},
                                        {"text": "a number", "label": 1, "image": 7},
                                        {"text": "no key", "label": 0}])
    corpus = read_corpus([str(tmp_path / f) for f in ("b.parquet", "c.parquet", "d.jsonl")], Columns(image="image"))
    assert_nothing_lost(corpus, {str(tmp_path / "b.parquet"): 7, str(tmp_path / "c.parquet"): 2,
                                 str(tmp_path / "d.jsonl"): 6})
    q = dict(zip(zip(corpus.quarantine["file"].to_list(), corpus.quarantine["row"].to_list()),
                 corpus.quarantine["reason"].to_list()))
    b, d = str(tmp_path / "b.parquet"), str(tmp_path / "d.jsonl")
    assert q[(b, 5)] == "missing image"
    assert q[(b, 6)].startswith("undecodable image") and q[(b, 7)].startswith("undecodable image")
    assert q[(d, 3)].startswith("unreadable image: img/missing.png")
    assert q[(d, 4)].startswith("undecodable image")
    assert q[(d, 5)] == "image is not bytes, a path or an HF Image: int"
    assert q[(d, 6)] == "missing image"
    kept = corpus.samples
    assert kept.height == 8 and kept.schema["image"] == pl.Binary
    assert kept.filter(pl.col("text") == "blue")["image"][0] == jpeg  # kept as stored, never re-encoded
    assert set(kept.filter(pl.col("text").is_in(["hf path", "relative", "absolute"]))["image"].to_list()) == {good}
    # one caption with two images: two samples, two ids
    same = kept.filter(pl.col("text") == "same caption")
    assert same.height == 2 and same["sample_id"].n_unique() == 2
    with pytest.raises(CorpusError, match="no image column 'picture'"):
        read_corpus([b], Columns(image="picture"))
    assert "image" not in read_corpus([d]).samples.columns  # text only unless asked
