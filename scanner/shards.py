"""Cutting input files into shards of at most `shard_size` rows: the unit of work, of output
and of resume. Planning reads what it must and no more:

- Parquet: the footer only. Shards follow row groups (small groups are joined, a group larger
  than shard_size is cut into pieces, each of which reads that group).
- JSON lines (uncompressed): one pass that finds the byte offset of every shard_size-th line,
  so each shard later reads only its byte range.
- CSV/TSV (uncompressed): the same with record starts, found by the csv module itself (so the
  planner counts the rows the reader will find: a newline inside a quoted field does not end a
  record, a quote inside a field does not open one). A quote never closed makes the rest of the
  file one record, which the reader quarantines with that reason.
- Compressed (.gz) files, JSON arrays and HF Arrow files: rows are counted; each shard then reads
  from the file's start and skips to its rows (a large .gz is decompressed once per shard:
  Parquet or plain JSON lines avoid that).

Row numbers are the file's own (from 1; the line number in JSON lines, the record number after
the header in CSV), whichever shard a row falls in.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc
import pyarrow.parquet as pq

from scanner.inputs import CorpusError, InputFile, is_compressed
from scanner.storage import filesystem, open_input, without_query

BLOCK = 16 << 20  # bytes read at a time while planning


@dataclass(frozen=True)
class Shard:
    name: str  # <file name>-<hash of its URI>-<index>: stable, whatever the other inputs are
    uri: str
    fmt: str
    source: str  # default source of its rows
    index: int  # position within its file
    first_row: int  # file row number of its first row (from 1)
    rows: int
    byte_start: int | None = None  # a byte range to read, where the format allows one
    byte_end: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def shard_prefix(uri: str) -> str:
    """What the names of one file's shards begin with."""
    return f"{posixpath.basename(without_query(uri).rstrip('/'))}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}-"


def shard_name(uri: str, index: int) -> str:
    return f"{shard_prefix(uri)}{index:05d}"


def _pieces(n: int, size: int) -> list[int]:
    """n rows as ceil(n / size) near-equal pieces, none above size."""
    k = -(-n // size)
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def parquet_ranges(group_rows: list[int], size: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges over row groups: whole groups joined up to `size` rows, a larger
    group cut into pieces."""
    ranges, start, open_start, open_rows = [], 0, 0, 0
    for n in group_rows:
        if n > size:
            if open_rows:
                ranges.append((open_start, open_start + open_rows))
            at = start
            for piece in _pieces(n, size):
                ranges.append((at, at + piece))
                at += piece
            open_start, open_rows = start + n, 0
        elif open_rows + n > size:
            ranges.append((open_start, open_start + open_rows))
            open_start, open_rows = start, n
        else:
            open_rows += n
        start += n
    if open_rows:
        ranges.append((open_start, open_start + open_rows))
    return ranges


def line_starts(stream, every: int) -> tuple[list[int], int, int]:
    """(byte offset of lines 0, every, 2*every, ...; number of lines; bytes). Lines end at b"\\n";
    a last line without one still counts. Vectorised per block, so it runs at disk speed."""
    starts, newlines, pos, last = [0], 0, 0, 10
    target = every  # the line after the target-th newline starts a shard
    while block := stream.read(BLOCK):
        nl = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
        while target <= newlines + len(nl):
            starts.append(pos + int(nl[target - newlines - 1]) + 1)
            target += every
        newlines += len(nl)
        pos += len(block)
        last = block[-1]
    lines = newlines + (last != 10)
    return [s for s in starts if s < pos], lines, pos


def lines_with_offsets(stream):
    """(offset, line) of a binary stream, line endings kept."""
    pos, rest = 0, b""
    while block := stream.read(BLOCK):
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        for line in parts:
            yield pos, line + b"\n"
            pos += len(line) + 1
    if rest:
        yield pos, rest


def csv_records(stream, delimiter: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(byte offset, fields, error) of each record of a binary CSV stream, header first, exactly
    as the csv module parses it (blank lines are not records). A quote left open at the end of
    the stream, or a field past the csv module's size limit, makes the rest of the stream one
    record with fields None and the error: counted and quarantined, never silently swallowed."""
    at = {"end": 0, "lines": 0, "exhausted": False}

    def lines():
        for pos, line in lines_with_offsets(stream):
            at["end"], at["lines"] = pos + len(line), at["lines"] + 1
            yield line.decode("utf-8", errors="surrogateescape")
        at["exhausted"] = True

    reader = csv.reader(lines(), delimiter=delimiter)
    while True:
        start, first_line = at["end"], at["lines"]
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield start, None, f"malformed CSV ({e}): the rest of the file is not split into rows"
            return
        if at["exhausted"]:  # the parser asked for more lines inside this record: a quote never closed
            yield start, None, (f"unterminated quote: the rest of the file ({at['lines'] - first_line} lines) "
                                "cannot be split into rows")
            return
        if fields:
            yield start, fields, None


def csv_record_starts(stream, every: int, delimiter: str = ",") -> tuple[list[int], int]:
    """(byte offsets of records 0, every, 2*every, ... after the header; number of records), as
    the reader will find them (csv_records)."""
    starts, n = [], 0
    records = csv_records(stream, delimiter)
    header = next(records, None)
    if header is not None and header[2]:
        raise CorpusError(f"the header row: {header[2]}")
    for pos, _, _ in records:
        if n % every == 0:
            starts.append(pos)
        n += 1
    return starts, n


def gunzip(raw):
    return gzip.GzipFile(fileobj=raw, mode="rb")


def is_json_array(head: bytes) -> bool:
    return head.lstrip().startswith(b"[")


def csv_delimiter(uri: str) -> str:
    return "\t" if without_query(uri).lower().removesuffix(".gz").endswith(".tsv") else ","


def parquet_file(uri: str) -> pq.ParquetFile:
    """A Parquet file whose footer is read to the byte (its length is in the last 8 bytes):
    pyarrow's own opening reads the last 64 kB, more than a small file's footer, and every shard
    of a file opens it."""
    source = open_input(uri)
    source.seek(-8, 2)
    tail = source.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length + 12 > source.size():
        raise pa.ArrowInvalid("not a Parquet file (no PAR1 footer)")
    source.seek(-8 - length, 2)
    metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + source.read(length) + tail))
    return pq.ParquetFile(source, metadata=metadata)


def open_arrow(uri: str):
    """An Arrow IPC reader: the stream format save_to_disk writes, or the file format. Local
    files are memory-mapped, so skipping to a shard costs no reading."""
    fs, path = filesystem(uri)
    source = pa.memory_map(path) if isinstance(fs, pafs.LocalFileSystem) else fs.open_input_file(path)
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def arrow_batches(uri: str) -> Iterator[pa.RecordBatch]:
    reader = open_arrow(uri)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        return (reader.get_batch(k) for k in range(reader.num_record_batches))
    return iter(reader)


def count_rows(f: InputFile) -> int:
    """Rows of a file that is read from its start: compressed, a JSON array, or HF Arrow."""
    if f.fmt == "arrow":
        return sum(b.num_rows for b in arrow_batches(f.uri))
    with open_input(f.uri) as raw:
        stream = gunzip(raw) if is_compressed(f.uri) else raw
        if f.fmt == "csv":
            return csv_record_starts(stream, 1 << 62, csv_delimiter(f.uri))[1]
        head = stream.read(1 << 16)
        if is_json_array(head):
            return len(json.loads((head + stream.read()).decode("utf-8")))
        _, lines, _ = line_starts(Prefixed(head, stream), 1 << 62)
        return lines


class Prefixed:
    """A stream with some bytes already read put back in front."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.stream.read(n)


def plan_file(f: InputFile, shard_size: int) -> list[Shard]:
    """The shards of one input file. Raises CorpusError for a file that cannot be read or holds
    no rows."""
    try:
        ranges = _plan_ranges(f, shard_size)
    except (OSError, EOFError, ValueError, UnicodeDecodeError, pa.ArrowException) as e:
        raise CorpusError(f"{f.uri}: cannot be read as {f.fmt}: {e}") from None
    if not ranges:
        raise CorpusError(f"{f.uri}: empty file (no rows)")
    return [Shard(name=shard_name(f.uri, i), uri=f.uri, fmt=f.fmt, source=f.source, index=i, first_row=first,
                  rows=rows, byte_start=b0, byte_end=b1) for i, (first, rows, b0, b1) in enumerate(ranges)]


def _plan_ranges(f: InputFile, size: int) -> list[tuple[int, int, int | None, int | None]]:
    """(first row, rows, byte start, byte end) per shard."""
    if f.fmt == "parquet":
        meta = parquet_file(f.uri).metadata
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        return [(a + 1, b - a, None, None) for a, b in parquet_ranges(groups, size)]
    if f.fmt in ("jsonl", "csv") and not is_compressed(f.uri):
        with open_input(f.uri) as raw:
            head = raw.read(1 << 16)
            raw.seek(0)
            if f.fmt == "jsonl" and not is_json_array(head):
                starts, n, end = line_starts(raw, size)
                return [(1 + i * size, min(size, n - i * size), s, e)
                        for i, (s, e) in enumerate(zip(starts, starts[1:] + [end]))]
            if f.fmt == "csv":
                starts, n = csv_record_starts(raw, size, csv_delimiter(f.uri))
                if n <= size:  # one shard: read whole, as the csv module reads it
                    return [(1, n, None, None)] if n else []
                return [(1 + i * size, min(size, n - i * size), s, e)
                        for i, (s, e) in enumerate(zip(starts, starts[1:] + [f.size]))]
    n = count_rows(f)
    return [(1 + a, min(size, n - a), None, None) for a in range(0, n, size)]
