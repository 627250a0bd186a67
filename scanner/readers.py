"""The raw records of one shard, per format: (row, record, problem) with the file's own row
numbers, a dict of column -> value, or None and the reason the row could not even be parsed."""

from __future__ import annotations

import io
import json
from itertools import islice
from typing import Iterable, Iterator

import pyarrow as pa

from scanner.inputs import CorpusError, is_compressed
from scanner.shards import (
    Prefixed,
    Shard,
    arrow_batches,
    csv_delimiter,
    csv_records,
    gunzip,
    is_json_array,
    lines_with_offsets,
    open_arrow,
    parquet_file,
)
from scanner.storage import open_input

Record = tuple[int, dict | None, str | None]


def _json_line(raw: bytes) -> tuple[dict | None, str | None]:
    raw = raw.rstrip(b"\r\n")
    if not raw.strip():
        return None, "blank line"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8: byte {e.start} of the line"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at column {e.colno}"
    return (obj, None) if isinstance(obj, dict) else (None, "not a JSON object")


def _read_range(uri: str, start: int, end: int) -> bytes:
    with open_input(uri) as f:
        return f.read_at(end - start, start)


def _jsonl(shard: Shard) -> Iterator[Record]:
    if shard.byte_start is not None:
        lines = _read_range(shard.uri, shard.byte_start, shard.byte_end).split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the range ends with a newline
        _check_count(shard, len(lines))
        for i, raw in enumerate(lines):
            yield (shard.first_row + i, *_json_line(raw))
        return
    with open_input(shard.uri) as raw_file:
        f = gunzip(raw_file) if is_compressed(shard.uri) else raw_file
        head = f.read(1 << 16)
        if is_json_array(head):  # one JSON array of objects
            try:
                items = json.loads((head + f.read()).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorpusError(f"{shard.uri}: not valid JSON ({e})") from None
            for i, item in enumerate(items[shard.first_row - 1: shard.first_row - 1 + shard.rows], shard.first_row):
                yield (i, item, None) if isinstance(item, dict) else (i, None, "not a JSON object")
            return
        lines = (line for _, line in lines_with_offsets(Prefixed(head, f)))
        for i, raw in enumerate(islice(lines, shard.first_row - 1, shard.first_row - 1 + shard.rows), shard.first_row):
            yield (i, *_json_line(raw))


def _csv_header(shard: Shard) -> list[str]:
    with open_input(shard.uri) as raw:
        return next(csv_records(raw, csv_delimiter(shard.uri)))[1]


def _csv(shard: Shard) -> Iterator[Record]:
    delimiter = csv_delimiter(shard.uri)
    if shard.byte_start is not None:
        data = _read_range(shard.uri, shard.byte_start, shard.byte_end)
        records = list(csv_records(io.BytesIO(data), delimiter))
        _check_count(shard, len(records))
        yield from _csv_rows(_csv_header(shard), enumerate(records, shard.first_row))
        return
    with open_input(shard.uri) as raw:
        records = csv_records(gunzip(raw) if is_compressed(shard.uri) else raw, delimiter)
        header = next(records)[1]
        yield from _csv_rows(header, enumerate(islice(records, shard.first_row - 1, shard.first_row - 1 + shard.rows),
                                               shard.first_row))


def _csv_rows(header: list[str], rows) -> Iterator[Record]:
    """Records as {column: cell}; a record short of cells gets None for the rest (as
    csv.DictReader does), one with more cells than the header is malformed."""
    for i, (_, fields, error) in rows:
        if error:
            yield i, None, error
        elif len(fields) > len(header):
            yield i, None, f"malformed CSV: {len(fields)} fields, header has {len(header)}"
        else:
            yield i, dict(zip(header, fields + [None] * (len(header) - len(fields)))), None


def columnar_batches(shard: Shard) -> Iterator[tuple[int, pa.RecordBatch]]:
    """A Parquet or Arrow shard's rows as record batches, each with the file row number (from 1)
    of its first row."""
    offset, stop = shard.first_row - 1, shard.first_row - 1 + shard.rows
    if shard.fmt == "parquet":
        pf = parquet_file(shard.uri)
        groups, first, at = [], 0, 0
        for g in range(pf.metadata.num_row_groups):  # only the row groups that hold this shard
            n = pf.metadata.row_group(g).num_rows
            if at < stop and at + n > offset:
                first = first if groups else at
                groups.append(g)
            at += n
        batches, at = pf.iter_batches(batch_size=8192, row_groups=groups), first
    else:
        batches, at = arrow_batches(shard.uri), 0
    for batch in batches:
        lo, hi = max(offset - at, 0), min(stop - at, batch.num_rows)
        if lo < hi:
            yield at + lo + 1, batch.slice(lo, hi - lo)
        at += batch.num_rows
        if at >= stop:
            return


def batch_records(batches: Iterable[tuple[int, pa.RecordBatch]]) -> Iterator[Record]:
    """columnar_batches' rows as records."""
    for first, batch in batches:
        for i, rec in enumerate(batch.to_pylist(), first):
            yield i, rec, None


def _columnar(shard: Shard) -> Iterator[Record]:
    return batch_records(columnar_batches(shard))


def _check_count(shard: Shard, n: int) -> None:
    if n != shard.rows:
        raise CorpusError(f"{shard.uri}: the file changed since it was planned, or its records cannot be split "
                          f"at line boundaries (rows {shard.first_row}..: planned {shard.rows}, found {n}); "
                          "use a larger --shard-size or Parquet")


def records(shard: Shard) -> Iterator[Record]:
    return {"jsonl": _jsonl, "csv": _csv}.get(shard.fmt, _columnar)(shard)


def columns_of(shard: Shard) -> list[str] | None:
    """Column names known before reading rows (columnar formats only)."""
    if shard.fmt == "parquet":
        return parquet_file(shard.uri).schema_arrow.names
    if shard.fmt == "arrow":
        return open_arrow(shard.uri).schema.names
    return None
