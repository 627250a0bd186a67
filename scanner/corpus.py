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

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from scanner.errors import InputError
from scanner.images import image_bytes
from scanner.inputs import CorpusError, list_inputs
from scanner.readers import Record, batch_records, columnar_batches, columns_of, records
from scanner.shards import Shard, plan_file

TEXT_COLUMN_DEFAULTS = ("text", "input")
SNIPPET_CHARS = 200
READ_ALL = 1 << 62  # a shard size that keeps each file in one shard

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


@dataclass(frozen=True)
class Columns:
    """Which input columns hold what. None means: use the default."""

    text: str | None = None  # default: "text", else "input"
    label: str | None = "label"  # None: labels are not read
    id: str | None = None  # default: "id" where the file has it
    source: str | None = None  # default: the file's path relative to the inputs' common folder
    image: str | None = None  # image-text samples: the image column (scanner.images); None: text only


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


# ---------------------------------------------------------------- validation


def stable_id(source: str, text: str, image: bytes | None = None) -> str:
    """Same (source, text[, image]) -> same id on any machine (never Python's salted hash())."""
    h = hashlib.sha256(f"{source}\0{text}".encode("utf-8", "surrogatepass"))
    if image is not None:  # one caption may go with many images
        h.update(b"\0image\0" + hashlib.sha256(image).digest())
    return h.hexdigest()[:20]


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


def _pick_text_column(cols: list[str] | None, first: dict | None, p: str, wanted: str | None) -> str:
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


# A superset of the characters str.strip() removes: a text holding any other character is not
# blank, and only the rest are checked one by one in Python.
NOT_BLANK = r"[^\s\x0b\x1c-\x1f\x85\p{Z}\p{Cc}\p{Cf}]"


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


class RowValidator:
    """Turns the raw records of shards into samples and quarantined rows. Duplicate ids are
    caught among everything this validator has seen (a whole corpus on one machine, one shard in
    a distributed read). Parquet and Arrow shards whose columns have plain types (string text,
    string or integer ids, numeric labels) are validated column by column, the texts never
    becoming Python strings; the rules and reasons are the same as row by row."""

    def __init__(self, columns: Columns = Columns()):
        self.columns = columns
        self.schema = SAMPLE_SCHEMA | ({"image": pl.Binary} if columns.image else {})
        self.samples: dict[str, list] = {k: [] for k in self.schema}  # rows not yet in `frames`
        self.frames: list[pl.DataFrame] = []
        self.quarantine: dict[str, list] = {k: [] for k in QUARANTINE_SCHEMA}
        self.first_seen: dict[str, str] = {}

    def _reject(self, file: str, row: int, reason: str, sid: str | None, raw: Any) -> None:
        for k, v in zip(QUARANTINE_SCHEMA, (file, row, reason, sid, None if raw is None else _snippet(raw))):
            self.quarantine[k].append(v)

    def _flush(self) -> None:
        if self.samples["text"]:
            self.frames.append(pl.DataFrame(self.samples, schema=self.schema))
            self.samples = {k: [] for k in self.schema}

    def add(self, shard: Shard) -> int:
        """Validates every row of the shard; returns how many rows it read."""
        fname = shard.uri
        try:
            cols = columns_of(shard)
            if cols is None:
                return self._add_rows(shard, cols, records(shard))
            batches = list(columnar_batches(shard))
            n_read = self._add_columns(shard, cols, batches)
            return n_read if n_read is not None else self._add_rows(shard, cols, batch_records(batches))
        except (OSError, EOFError, ValueError, pa.ArrowException) as e:  # not a bad row: a file that cannot be read
            if isinstance(e, InputError):
                raise
            raise CorpusError(f"{fname}: cannot be read as {shard.fmt}: {e}") from None

    def _add_rows(self, shard: Shard, cols: list[str] | None, rows: Iterable[Record]) -> int:
        columns, fname = self.columns, shard.uri
        n_before = len(self.samples["text"]) + len(self.quarantine["row"])
        text_col = None
        for row, rec, problem in rows:
            if problem is not None:
                self._reject(fname, row, problem, None, None)
                continue
            if text_col is None:
                text_col = _pick_text_column(cols, rec, fname, columns.text)
                if columns.image is not None and cols is not None and columns.image not in cols:
                    raise CorpusError(f"{fname}: no image column {columns.image!r} (columns: {', '.join(cols)})")
            where = f"{fname} row {row}"
            text, why = _text_of(rec.get(text_col))
            image = None
            if columns.image is not None and why is None:
                image, why = image_bytes(rec.get(columns.image), fname)
            label = None
            if columns.label is not None and columns.label in rec:
                label = _parse_label(rec[columns.label], shard.fmt == "csv", where, columns.label)
            source = shard.source
            if columns.source is not None and rec.get(columns.source) not in (None, ""):
                source = str(rec[columns.source])
            id_col = columns.id or "id"
            if id_col in rec and rec[id_col] not in (None, ""):
                raw_id = rec[id_col]
                if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
                    self._reject(fname, row, f"id is not a string or integer: {raw_id!r}", None, rec.get(text_col))
                    continue
                sid = str(raw_id)
            elif columns.id is not None:
                self._reject(fname, row, f"missing id in column {columns.id!r}", None, rec.get(text_col))
                continue
            else:
                sid = stable_id(source, text, image) if text is not None and why is None else None
            if why is not None:
                self._reject(fname, row, why, sid, rec.get(text_col))
                continue
            if sid in self.first_seen:
                self._reject(fname, row, f"duplicate id: first seen at {self.first_seen[sid]}", sid, text)
                continue
            self.first_seen[sid] = where
            for k, v in zip(self.schema, (sid, text, label, source, fname, row, image)):
                self.samples[k].append(v)
        return len(self.samples["text"]) + len(self.quarantine["row"]) - n_before

    def _add_columns(self, shard: Shard, cols: list[str], batches: list[tuple[int, pa.RecordBatch]]) -> int | None:
        """_add_rows' rules, column by column; None where a column's type needs the row path."""
        columns, fname = self.columns, shard.uri
        if columns.image is not None:  # images are decoded one by one anyway
            return None
        n = sum(b.num_rows for _, b in batches)
        if n == 0:
            return 0
        table = pa.Table.from_batches([b for _, b in batches])
        text_col = _pick_text_column(cols, None, fname, columns.text)
        id_col = columns.id or "id"
        label_col = columns.label if columns.label in cols else None
        source_col = columns.source if columns.source in cols else None
        types = table.schema
        if not (_is_string(types.field(text_col).type)
                and (label_col is None or pa.types.is_integer(types.field(label_col).type)
                     or pa.types.is_floating(types.field(label_col).type))
                and (source_col is None or _is_string(types.field(source_col).type))
                and (id_col not in cols or _is_string(types.field(id_col).type)
                     or pa.types.is_integer(types.field(id_col).type))):
            return None
        self._flush()
        rows = np.concatenate([np.arange(first, first + b.num_rows) for first, b in batches])
        text = table.column(text_col).combine_chunks()
        text.validate(full=True)  # invalid UTF-8: the file cannot be read, as in the row path
        labels = None
        if label_col is not None:
            values = table.column(label_col).to_numpy(zero_copy_only=False).astype(float)
            bad = ~np.isin(values, (0, 1))  # a null is nan: not a label either
            if bad.any():
                at = int(np.argmax(bad))
                _parse_label(table.column(label_col)[at].as_py(), False, f"{fname} row {rows[at]}", label_col)
            labels = values.astype(np.int8)
        source = pa.array(np.full(n, shard.source), pa.string())
        if source_col is not None:
            given = table.column(source_col).combine_chunks().cast(pa.string())
            source = pc.if_else(pc.fill_null(pc.not_equal(given, ""), False), given, source)
        ids = [None] * n
        if id_col in cols:
            ids = table.column(id_col).combine_chunks().cast(pa.string()).to_pylist()
        missing_text = np.asarray(text.is_null())
        blank = ~np.asarray(pc.fill_null(pc.match_substring_regex(text, NOT_BLANK), False)) & ~missing_text
        for i in np.flatnonzero(blank):  # only these need the exact Python rule
            blank[i] = not text[int(i)].as_py().strip()
        sources = source.to_pylist() if columns.id is None else None
        keep = np.zeros(n, dtype=bool)
        sids: list[str | None] = []
        for i in range(n):
            sid, row = ids[i], int(rows[i])
            why = "missing text" if missing_text[i] else "empty text" if blank[i] else None
            if sid in (None, ""):
                if columns.id is not None:
                    self._reject(fname, row, f"missing id in column {columns.id!r}", None, text[i].as_py())
                    continue
                sid = stable_id(sources[i], text[i].as_py()) if why is None else None
            if why is not None:
                self._reject(fname, row, why, sid, text[i].as_py())
                continue
            if sid in self.first_seen:
                self._reject(fname, row, f"duplicate id: first seen at {self.first_seen[sid]}", sid, text[i].as_py())
                continue
            self.first_seen[sid] = f"{fname} row {row}"
            keep[i] = True
            sids.append(sid)
        kept = pa.array(keep)
        self.frames.append(pl.DataFrame({
            "sample_id": pl.Series(sids, dtype=pl.String), "text": pl.from_arrow(text.filter(kept)),
            "label": None if labels is None else labels[keep], "source": pl.from_arrow(source.filter(kept)),
            "file": [fname] * int(keep.sum()), "row": rows[keep]}, schema=SAMPLE_SCHEMA))
        return n

    def corpus(self, files: list[str]) -> Corpus:
        self._flush()
        samples = pl.concat(self.frames) if self.frames else pl.DataFrame(schema=self.schema)
        return Corpus(samples=samples, quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA), files=files)


def read_shard(shard: Shard, columns: Columns = Columns()) -> Corpus:
    """One shard's samples and quarantined rows (duplicate ids caught within the shard)."""
    validator = RowValidator(columns)
    validator.add(shard)
    return validator.corpus([shard.uri])


def read_corpus(paths: list[str], columns: Columns = Columns(), progress=None) -> Corpus:
    """Read and validate every row of every input, here (for data that fits in memory: eval sets,
    a baseline's corpus). Label errors raise CorpusError; any other bad row is quarantined with
    its reason; an empty file, or inputs without a single usable row, are errors."""
    files = list_inputs(paths)
    validator = RowValidator(columns)
    for f in files:
        n_rows = sum(validator.add(shard) for shard in plan_file(f, READ_ALL))
        if progress is not None:
            progress(f"read {f.uri}: {n_rows} rows")
    corpus = validator.corpus([f.uri for f in files])
    if corpus.samples.height == 0:
        raise CorpusError(f"no usable row in {' '.join(paths)}: {corpus.counts['quarantined_by_reason']}")
    return corpus
