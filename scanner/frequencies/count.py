"""One corpus shard's token counts: the Ray task of `scanner frequencies`, and the reader of the
finished table (the scoring actors use it for DC-PDD). Kept apart from the run so a worker
imports only what counting needs.

Every token of every text is counted as the model's tokenizer cuts it, without special tokens
and without truncation (DC-PDD's authors cut each text at 1024 tokens: nothing here is cut)."""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache

import numpy as np
import pyarrow as pa

from scanner.corpus import Columns
from scanner.errors import InputError
from scanner.runfolder import open_shard
from scanner.storage import Store

TABLE = "frequencies.parquet"  # token_id, count: every id of the vocabulary
INFO = "frequencies.json"  # tokenizer, its fingerprint, vocabulary size, tokens, documents, the table's fingerprint
TEXTS_PER_CALL = 256


@lru_cache(maxsize=2)
def load_tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoTokenizer

    from scanner.scoring.factory import local_model

    return AutoTokenizer.from_pretrained(local_model(model), revision=revision, trust_remote_code=trust_remote_code)


def vocabulary_size(tokenizer) -> int:
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def tokenizer_fingerprint(tokenizer) -> str:
    """Which tokenizer: its class and its vocabulary (the same ids for the same strings)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"\0{i}\0{token}".encode())
    return h.hexdigest()[:16]


def count_shard(shard: dict, columns: Columns, tokenizer_args: tuple, folder_uri: str) -> dict:
    """Reads and validates one shard, counts its tokens, writes the counts (non-zero ids) and
    then its completion record."""
    import ray

    t0 = time.perf_counter()
    s, folder, corpus, error = open_shard(shard, columns, folder_uri)
    if error:
        return {"shard": s.name, "error": error}
    tokenizer = load_tokenizer(*tokenizer_args)
    counts = np.zeros(vocabulary_size(tokenizer), dtype=np.int64)
    texts = corpus.samples["text"].to_list()
    for i in range(0, len(texts), TEXTS_PER_CALL):
        ids = tokenizer(texts[i:i + TEXTS_PER_CALL], add_special_tokens=False, verbose=False)["input_ids"]
        if ids:
            counts += np.bincount(np.concatenate([np.asarray(r, dtype=np.int64) for r in ids]), minlength=len(counts))
    nonzero = np.flatnonzero(counts)
    table = pa.table({"token_id": pa.array(nonzero, pa.int32()), "count": pa.array(counts[nonzero], pa.int64())})
    c = corpus.counts
    record = {"shard": s.name, "counts": {k: c[k] for k in ("read", "quarantined", "quarantined_by_reason")},
              "tokens": int(counts.sum()), "node": ray.get_runtime_context().get_node_id(),
              "seconds": round(time.perf_counter() - t0, 3)}
    folder.finish_shard(s.name, table, record)
    return record


def table_fingerprint(counts: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(counts, dtype="<i8").tobytes()).hexdigest()[:16]


def _finished(uri: str) -> tuple[Store, dict]:
    """A finished `scanner frequencies` folder and its info; else one line saying it is not one."""
    store = Store(uri, create=False)
    if not store.exists(INFO):
        raise InputError(f"token_frequencies {uri}: no {INFO} in it (not a finished `scanner frequencies` folder)")
    return store, store.read_json(INFO)


def read_table(uri: str) -> tuple[np.ndarray, dict]:
    """(count per token id, the table's info) of a finished `scanner frequencies` folder."""
    store, info = _finished(uri)
    t = store.read_parquet(TABLE)
    counts = np.zeros(info["vocabulary_size"], dtype=np.int64)
    counts[t["token_id"].to_numpy()] = t["count"].to_numpy()
    return counts, info


def check_table(uri: str, model: str, revision: str | None, trust_remote_code: bool) -> str:
    """The table's fingerprint, once it is known to be counted with the model's tokenizer (another
    tokenizer's ids would be other tokens: refused in one line)."""
    _, info = _finished(uri)
    mine = tokenizer_fingerprint(load_tokenizer(model, revision, trust_remote_code))
    if info["tokenizer_fingerprint"] != mine:
        raise InputError(f"token_frequencies {uri}: counted with the tokenizer of {info['tokenizer']}, which is not "
                         f"{model}'s: count the corpus with --model {model}")
    return info["table_fingerprint"]
