"""Remote inputs and outputs through fsspec (an in-memory filesystem stands in for s3/gcs)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scanner.corpus import is_corpus_file, read_corpus
from scanner.errors import InputError
from scanner.storage import Store, list_files, local_copy

fsspec = pytest.importorskip("fsspec")


def test_list_read_and_write_through_an_fsspec_filesystem():
    mem = fsspec.filesystem("memory")
    mem.pipe("/corpus/a/part-0.jsonl", b'{"text": "hello world"}\n{"text": ""}\n')
    mem.pipe("/corpus/b/part-1.jsonl", b'{"text": "second file"}\n')
    mem.pipe("/corpus/b/notes.txt", b"not a corpus file")
    assert list_files(["memory:///corpus"], is_corpus_file) == ["memory:///corpus/a/part-0.jsonl",
                                                               "memory:///corpus/b/part-1.jsonl"]
    assert list_files(["memory:///corpus/*/part-1*"], is_corpus_file) == ["memory:///corpus/b/part-1.jsonl"]
    with pytest.raises(InputError, match="no such file"):
        list_files(["memory:///nowhere"], is_corpus_file)
    with local_copy("memory:///corpus/a/part-0.jsonl") as path:
        corpus = read_corpus([str(path)])
    assert path.name == "part-0.jsonl" and not path.exists()  # a temporary copy, gone afterwards
    assert corpus.counts["kept"] == 1 and corpus.counts["quarantined"] == 1

    store = Store("memory:///results")
    store.write_json("done/x.json", {"ok": 1})
    store.write_parquet("docs/x.parquet", pa.table({"a": [1, 2]}))
    assert store.exists("done/x.json") and store.read_json("done/x.json") == {"ok": 1}
    assert pq.read_table(store.path("docs/x.parquet"), filesystem=store.fs)["a"].to_pylist() == [1, 2]
    assert mem.exists("/results/docs/x.parquet")


def test_an_unknown_scheme_is_a_clear_error():
    with pytest.raises(InputError, match="nosuchproto://x"):
        Store("nosuchproto://x")
