"""Big inputs are cut into shards of at most shard_size rows, each read on its own (by byte range,
row group or skipping), and the shards together read exactly what the whole file reads."""

import csv
import gzip
import io
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanner.corpus import Columns, RowValidator, read_corpus, read_shard
from scanner.inputs import CorpusError, list_inputs
from scanner.shards import csv_record_starts, parquet_ranges, plan_file


def sharded(path, size, columns=Columns()):
    """(shards, samples and quarantine of all shards read one by one, each with its own validator)."""
    (f,) = list_inputs([str(path)])
    shards = plan_file(f, size)
    parts = [read_shard(s, columns) for s in shards]
    return shards, pl.concat([p.samples for p in parts]), pl.concat([p.quarantine for p in parts])


def assert_same_as_whole(path, size, columns=Columns()):
    shards, samples, quarantine = sharded(path, size, columns)
    whole = read_corpus([str(path)], columns)
    assert all(s.rows <= size for s in shards)
    assert sum(s.rows for s in shards) == whole.counts["read"]
    assert samples.equals(whole.samples)
    assert quarantine.equals(whole.quarantine)
    assert [s.first_row for s in shards] == sorted({s.first_row for s in shards})
    return shards


def messy_jsonl_lines(n):
    lines = []
    for i in range(n):
        if i % 17 == 5:
            lines.append(b"")  # blank line: a row, quarantined
        elif i % 23 == 7:
            lines.append(b'{"text": "broken')
        else:
            lines.append(json.dumps({"text": f"passage {i} with words", "label": i % 2}).encode())
    return lines


@pytest.mark.parametrize("size", [1, 7, 50, 1000])
def test_jsonl_byte_ranges_read_what_the_whole_file_reads(tmp_path, size):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(messy_jsonl_lines(200)))  # no newline after the last line
    shards = assert_same_as_whole(path, size)
    assert all(s.byte_start is not None for s in shards)
    assert len(shards) == -(-200 // size)


def test_compressed_jsonl_and_json_arrays_are_sharded_by_rows(tmp_path):
    gz = tmp_path / "big.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join(messy_jsonl_lines(120)) + b"\n"))
    shards = assert_same_as_whole(gz, 25)
    assert len(shards) == 5 and shards[0].byte_start is None
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"text": f"item {i}", "label": 1} for i in range(30)] + [[1]]))
    assert len(assert_same_as_whole(arr, 8)) == 4


def test_csv_record_starts_respect_quoted_newlines_and_blank_lines(tmp_path):
    rows = [["id", "text", "label"]]
    for i in range(60):
        text = f'line {i}\nsecond "quoted" line' if i % 4 == 0 else f"plain, {i}"
        rows.append([str(i), text, str(i % 2)])
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    data = buf.getvalue().replace("\r\n3,", "\r\n\r\n3,")  # a blank line between records
    path = tmp_path / "q.csv"
    path.write_bytes(data.encode() + b'\n61,bad \xff byte,1\n62,too,many,1\n')
    starts, n = csv_record_starts(open(path, "rb"), 10)
    assert n == 62 and len(starts) == 7
    shards = assert_same_as_whole(path, 10, Columns(id="id"))
    assert shards[1].byte_start is not None
    gz = tmp_path / "q.tsv.gz"
    gz.write_bytes(gzip.compress(data.replace(",", "\t").encode()))
    assert len(assert_same_as_whole(gz, 16)) == 4


def test_parquet_shards_follow_row_groups(tmp_path):
    table = pa.table({"text": [f"row {i}" if i % 9 else "" for i in range(100)], "label": [i % 2 for i in range(100)]})
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=30)  # groups of 30, 30, 30, 10
    shards = assert_same_as_whole(path, 25)  # each group of 30 cut in two pieces of 15
    assert [s.rows for s in shards] == [15, 15, 15, 15, 15, 15, 10]
    assert [s.rows for s in assert_same_as_whole(path, 70)] == [60, 40]
    assert parquet_ranges([5, 5, 5, 20, 3], 10) == [(0, 10), (10, 15), (15, 25), (25, 35), (35, 38)]


def test_hf_arrow_files_are_sharded_by_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(45)], "label": [i % 2 for i in range(45)]})
    ds.save_to_disk(str(tmp_path / "ds"), max_shard_size="1KB")
    validator = RowValidator()
    for f in list_inputs([str(tmp_path / "ds")]):
        for shard in plan_file(f, 4):
            assert shard.rows <= 4
            validator.add(shard)
    assert validator.corpus([]).samples["text"].to_list() == [f"doc {i}" for i in range(45)]


def test_empty_files_are_errors_naming_the_file(tmp_path):
    for name, content in (("e.jsonl", b""), ("e.csv", b"text,label\n"), ("e.jsonl.gz", gzip.compress(b""))):
        (tmp_path / name).write_bytes(content)
        (f,) = list_inputs([str(tmp_path / name)])
        with pytest.raises(CorpusError, match=rf"{name}: empty file"):
            plan_file(f, 10)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(CorpusError, match=r"e\.parquet: empty file"):
        read_corpus([str(tmp_path / "e.parquet")])


def test_a_corpus_without_a_usable_row_is_an_error(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(CorpusError, match=r"no usable row in .*q\.jsonl.*'empty text': 2"):
        read_corpus([str(tmp_path / "q.jsonl")])
