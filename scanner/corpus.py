"""Read corpora into one validated table of samples, plus a quarantine table of rejected rows.

Formats: JSON lines (.jsonl/.ndjson/.json, optionally .gz; a .json holding one array also works),
Parquet, CSV/TSV, and HF `datasets.save_to_disk` folders (Arrow files, Dataset or DatasetDict).
Arguments may be files, folders (searched recursively) or globs.

Contracts:
- label: 1 = member, 0 = non-member. Any other value (strings such as "yes", bools, 2, null) is a
  CorpusError naming file, row and value; nothing is guessed. In CSV every cell is text, so there
  the label must read "0" or "1".
- sample_id: the id column when the file has one, else a stable hash of (source, text).
- nothing is lost: every row read is either kept or quarantined with a reason, so
  read == kept + quarantined, and the counts say how many of each.
Rows are numbered from 1 within their file; in JSON lines the row is the line number.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from scanner.errors import InputError

TEXT_COLUMN_DEFAULTS = ("text", "input")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
SNIPPET_CHARS = 200
CSV_EXTRA = "\0extra"  # DictReader key for cells beyond the header

SAMPLE_SCHEMA = {
    "sample_id": pl.String,
    "text": pl.String,
    "label": pl.Int8,
    "source": pl.String,
    "file": pl.String,
    "row": pl.Int64,
}
QUARANTINE_SCHEMA = {
    "file": pl.String,
    "row": pl.Int64,
    "reason": pl.String,
    "sample_id": pl.String,
    "snippet": pl.String,
}


class CorpusError(InputError):
    """Input that cannot be read as a corpus at all (as opposed to a single bad row)."""


@dataclass(frozen=True)
class Columns:
    """Which input columns hold what. None means: use the default."""

    text: str | None = None  # default: "text", else "input"
    label: str = "label"
    id: str | None = None  # default: "id" where the file has it
    source: str | None = None  # default: the file's path relative to the inputs' common folder


@dataclass
class Corpus:
    samples: pl.DataFrame
    quarantine: pl.DataFrame
    files: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict:
        return {
            "read": self.samples.height + self.quarantine.height,
            "kept": self.samples.height,
            "quarantined": self.quarantine.height,
            "quarantined_by_reason": dict(
                sorted(Counter(_reason_kind(r) for r in self.quarantine["reason"]).items())
            ),
            "files": len(self.files),
        }

    def labelled(self) -> pl.DataFrame:
        """Samples with a label; raises when some have none (a split needs every label)."""
        missing = self.samples.filter(pl.col("label").is_null())
        if missing.height:
            files = sorted(set(missing["file"]))
            raise CorpusError(
                f"{missing.height} of {self.samples.height} samples have no label column "
                f"(files: {', '.join(files[:5])}); this needs labels 1 = member, 0 = non-member"
            )
        return self.samples


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


# ---------------------------------------------------------------- finding files


def expand_paths(paths: list[str]) -> list[Path]:
    """Files (and HF dataset folders) named by the arguments, in a stable order, no repeats."""
    found: list[Path] = []
    for arg in paths:
        if any(ch in arg for ch in "*?["):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise CorpusError(f"{arg}: the pattern matches no file")
            for m in matches:
                found.extend(_expand_one(Path(m)))
        else:
            p = Path(arg)
            if not p.exists():
                raise CorpusError(f"{arg}: no such file or folder")
            found.extend(_expand_one(p))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise CorpusError(f"no readable corpus files in {' '.join(paths)}")
    return unique


def _is_hf_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _expand_one(p: Path) -> list[Path]:
    if p.is_dir():
        if _is_hf_dataset(p):
            return _hf_arrow_files(p)
        files = [f for f in sorted(p.rglob("*")) if f.is_file() and _format_of(f, strict=False)]
        hf_dirs = sorted({d for d in p.rglob("*") if d.is_dir() and _is_hf_dataset(d)})
        arrow = [f for d in hf_dirs for f in _hf_arrow_files(d)]
        return [f for f in files if not any(d in f.parents for d in hf_dirs)] + arrow
    if _format_of(p, strict=False) is None:
        raise CorpusError(
            f"{p}: unsupported file type; use JSON lines, Parquet, CSV/TSV or an HF save_to_disk folder"
        )
    return [p]


def _hf_arrow_files(folder: Path) -> list[Path]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        return [f for s in splits for f in _hf_arrow_files(folder / s)]
    state = json.loads((folder / "state.json").read_text())
    return [folder / d["filename"] for d in state["_data_files"]]


def is_corpus_file(name: str) -> bool:
    return _format_of(Path(name), strict=False) is not None


def _format_of(p: Path, strict: bool = True) -> str | None:
    name = p.name.lower().removesuffix(".gz")
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    if strict:
        raise CorpusError(f"{p}: unsupported file type")
    return None


# ---------------------------------------------------------------- raw records per format
# Each reader yields (row, record, problem): a dict of column -> value, or None and the reason
# the row could not even be parsed.

Record = tuple[int, dict | None, str | None]


def _open_bytes(p: Path):
    return gzip.open(p, "rb") if p.name.lower().endswith(".gz") else open(p, "rb")


def _read_jsonl(p: Path) -> Iterator[Record]:
    with _open_bytes(p) as f:
        head = f.read(1 << 16).lstrip()
        f.seek(0)
        if head.startswith(b"["):  # one JSON array of objects
            try:
                items = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CorpusError(f"{p}: not valid JSON ({e})") from None
            for i, item in enumerate(items, 1):
                yield (i, item, None) if isinstance(item, dict) else (i, None, "not a JSON object")
            return
        for i, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                yield i, None, "blank line"
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, None, f"invalid UTF-8: byte {e.start} of the line"
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, None, f"invalid JSON: {e.msg} at column {e.colno}"
                continue
            yield (i, obj, None) if isinstance(obj, dict) else (i, None, "not a JSON object")


def _read_csv(p: Path) -> Iterator[Record]:
    with _open_bytes(p) as f:
        # surrogateescape keeps undecodable bytes visible per cell instead of failing the file
        content = f.read().decode("utf-8", errors="surrogateescape")
    delimiter = "\t" if p.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter, restkey=CSV_EXTRA)
    for i, rec in enumerate(reader, 1):
        if CSV_EXTRA in rec:
            n_fields = len(reader.fieldnames) + len(rec[CSV_EXTRA])
            yield i, None, f"malformed CSV: {n_fields} fields, header has {len(reader.fieldnames)}"
            continue
        yield i, rec, None


def _read_columnar(p: Path, fmt: str) -> Iterator[Record]:
    if fmt == "parquet":
        pf = pq.ParquetFile(p)
        batches = pf.iter_batches(batch_size=8192)
    else:
        batches = _arrow_batches(p)
    i = 0
    for batch in batches:
        for rec in batch.to_pylist():
            i += 1
            yield i, rec, None


def _arrow_batches(p: Path) -> Iterator[pa.RecordBatch]:
    try:
        reader = pa.ipc.open_stream(p)  # what datasets.save_to_disk writes
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(p)
        for k in range(reader.num_record_batches):
            yield reader.get_batch(k)
        return
    yield from reader


def _columns_of(p: Path, fmt: str) -> list[str] | None:
    """Column names known before reading rows (columnar formats only)."""
    if fmt == "parquet":
        return pq.read_schema(p).names
    if fmt == "arrow":
        try:
            return pa.ipc.open_stream(p).schema.names
        except pa.ArrowInvalid:
            return pa.ipc.open_file(p).schema.names
    return None


# ---------------------------------------------------------------- validation


def stable_id(source: str, text: str) -> str:
    """Same (source, text) -> same id on any machine (never Python's salted hash())."""
    return hashlib.sha256(f"{source}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _snippet(value: Any) -> str:
    s = value if isinstance(value, str) else repr(value)
    return s[:SNIPPET_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parse_label(value: Any, from_csv: bool, where: str, col: str) -> int:
    if from_csv and isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return int(value)
    raise CorpusError(
        f"{where}: label column {col!r} holds {value!r} ({type(value).__name__}); "
        "labels must be 1 = member or 0 = non-member"
    )


def _text_of(value: Any) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason)."""
    if value is None:
        return None, "missing text"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid UTF-8 in text"
    if not isinstance(value, str):
        return None, f"text is not a string: {type(value).__name__}"
    if _has_lone_surrogate(value):
        return None, "invalid UTF-8 in text"
    if not value.strip():
        return None, "empty text"
    return value, None


def _pick_text_column(cols: list[str] | None, first: dict | None, p: Path, wanted: str | None) -> str:
    if wanted is not None:
        if cols is not None and wanted not in cols:
            raise CorpusError(f"{p}: no text column {wanted!r} (columns: {', '.join(cols)})")
        return wanted
    names = cols if cols is not None else list(first or {})
    for name in TEXT_COLUMN_DEFAULTS:
        if name in names:
            return name
    raise CorpusError(
        f"{p}: no text column; looked for {' or '.join(TEXT_COLUMN_DEFAULTS)} among "
        f"({', '.join(names)}); choose one with --text-col"
    )


def read_corpus(paths: list[str], columns: Columns = Columns(), progress=None) -> Corpus:
    """Read and validate every row of every input. Label errors raise CorpusError; any other bad
    row is quarantined with its reason."""
    files = expand_paths(paths)
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    samples: dict[str, list] = {k: [] for k in SAMPLE_SCHEMA}
    quarantine: dict[str, list] = {k: [] for k in QUARANTINE_SCHEMA}
    first_seen: dict[str, str] = {}

    def reject(file: str, row: int, reason: str, sid: str | None, raw: Any) -> None:
        for k, v in zip(QUARANTINE_SCHEMA, (file, row, reason, sid, None if raw is None else _snippet(raw))):
            quarantine[k].append(v)

    for p in files:
        try:
            fmt = _format_of(p)
            fname = str(p)
            default_source = str(p.relative_to(root)) if p != root else p.name
            cols = _columns_of(p, fmt)
            records = {"jsonl": _read_jsonl, "csv": _read_csv}.get(fmt, lambda q: _read_columnar(q, fmt))(p)
            text_col = None
            n_before = len(samples["text"]) + len(quarantine["row"])
            for row, rec, problem in records:
                if problem is not None:
                    reject(fname, row, problem, None, None)
                    continue
                if text_col is None:
                    text_col = _pick_text_column(cols if cols is not None else None, rec, p, columns.text)
                    if fmt == "csv":
                        cols = list(rec)
                where = f"{fname} row {row}"
                text, why = _text_of(rec.get(text_col))
                label = None
                if columns.label in rec:
                    label = _parse_label(rec[columns.label], fmt == "csv", where, columns.label)
                source = default_source
                if columns.source is not None and rec.get(columns.source) not in (None, ""):
                    source = str(rec[columns.source])
                id_col = columns.id or "id"
                if id_col in rec and rec[id_col] not in (None, ""):
                    raw_id = rec[id_col]
                    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                        reject(fname, row, f"id is not a string or integer: {raw_id!r}", None, rec.get(text_col))
                        continue
                    sid = str(raw_id)
                elif columns.id is not None:
                    reject(fname, row, f"missing id in column {columns.id!r}", None, rec.get(text_col))
                    continue
                else:
                    sid = stable_id(source, text) if text is not None else None
                if why is not None:
                    reject(fname, row, why, sid, rec.get(text_col))
                    continue
                if sid in first_seen:
                    reject(fname, row, f"duplicate id: first seen at {first_seen[sid]}", sid, text)
                    continue
                first_seen[sid] = where
                for k, v in zip(SAMPLE_SCHEMA, (sid, text, label, source, fname, row)):
                    samples[k].append(v)
        except (OSError, EOFError, pa.ArrowException) as e:  # not a bad row: a file that cannot be read
            raise CorpusError(f"{p}: cannot be read as {_format_of(p)}: {e}") from None
        if progress is not None:
            n_rows = len(samples["text"]) + len(quarantine["row"]) - n_before
            progress(f"read {fname}: {n_rows} rows")

    return Corpus(
        samples=pl.DataFrame(samples, schema=SAMPLE_SCHEMA),
        quarantine=pl.DataFrame(quarantine, schema=QUARANTINE_SCHEMA),
        files=[str(f) for f in files],
    )
