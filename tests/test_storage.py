"""Remote inputs and outputs through fsspec (an in-memory filesystem stands in for s3/gcs)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanner.corpus import read_corpus
from scanner.errors import InputError
from scanner.inputs import list_inputs
from scanner.storage import Store

fsspec = pytest.importorskip("fsspec")


def test_list_read_and_write_through_an_fsspec_filesystem():
    mem = fsspec.filesystem("memory")
    mem.pipe("/corpus/a/part-0.jsonl", b'{"text": "hello world"}\n{"text": ""}\n')
    mem.pipe("/corpus/b/part-1.jsonl", b'{"text": "second file"}\n')
    mem.pipe("/corpus/b/notes.txt", b"not a corpus file")
    files = list_inputs(["memory:///corpus"])
    assert [f.uri for f in files] == ["memory:///corpus/a/part-0.jsonl", "memory:///corpus/b/part-1.jsonl"]
    assert [f.source for f in files] == ["a/part-0.jsonl", "b/part-1.jsonl"] and files[0].size > 0
    assert [f.uri for f in list_inputs(["memory:///corpus/*/part-1*"])] == ["memory:///corpus/b/part-1.jsonl"]
    with pytest.raises(InputError, match="no such file"):
        list_inputs(["memory:///nowhere"])
    corpus = read_corpus(["memory:///corpus/a/part-0.jsonl"])  # read in place, by byte range
    assert corpus.counts["kept"] == 1 and corpus.counts["quarantined"] == 1
    assert corpus.samples["file"].to_list() == ["memory:///corpus/a/part-0.jsonl"]

    store = Store("memory:///results")
    store.write_json("done/x.json", {"ok": 1})
    store.write_parquet("features/x.parquet", pa.table({"a": [1, 2]}))
    assert store.exists("done/x.json") and store.read_json("done/x.json") == {"ok": 1}
    assert pq.read_table(store.path("features/x.parquet"), filesystem=store.fs)["a"].to_pylist() == [1, 2]
    assert mem.exists("/results/features/x.parquet") and store.names("done") == ["x.json"]


def test_an_unknown_scheme_is_a_clear_error():
    with pytest.raises(InputError, match="nosuchproto://x"):
        Store("nosuchproto://x")
