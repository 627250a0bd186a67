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
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from scanner.errors import InputError
from scanner.inputs import CorpusError, list_inputs
from scanner.readers import columns_of, records
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


class RowValidator:
    """Turns the raw records of shards into samples and quarantined rows. Duplicate ids are
    caught among everything this validator has seen (a whole corpus on one machine, one shard in
    a distributed read)."""

    def __init__(self, columns: Columns = Columns()):
        self.columns = columns
        self.samples: dict[str, list] = {k: [] for k in SAMPLE_SCHEMA}
        self.quarantine: dict[str, list] = {k: [] for k in QUARANTINE_SCHEMA}
        self.first_seen: dict[str, str] = {}

    def _reject(self, file: str, row: int, reason: str, sid: str | None, raw: Any) -> None:
        for k, v in zip(QUARANTINE_SCHEMA, (file, row, reason, sid, None if raw is None else _snippet(raw))):
            self.quarantine[k].append(v)

    def add(self, shard: Shard) -> int:
        """Validates every row of the shard; returns how many rows it read."""
        columns, fname = self.columns, shard.uri
        n_before = len(self.samples["text"]) + len(self.quarantine["row"])
        try:
            cols = columns_of(shard)
            text_col = None
            for row, rec, problem in records(shard):
                if problem is not None:
                    self._reject(fname, row, problem, None, None)
                    continue
                if text_col is None:
                    text_col = _pick_text_column(cols, rec, fname, columns.text)
                where = f"{fname} row {row}"
                text, why = _text_of(rec.get(text_col))
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
                    sid = stable_id(source, text) if text is not None else None
                if why is not None:
                    self._reject(fname, row, why, sid, rec.get(text_col))
                    continue
                if sid in self.first_seen:
                    self._reject(fname, row, f"duplicate id: first seen at {self.first_seen[sid]}", sid, text)
                    continue
                self.first_seen[sid] = where
                for k, v in zip(SAMPLE_SCHEMA, (sid, text, label, source, fname, row)):
                    self.samples[k].append(v)
        except (OSError, EOFError, ValueError, pa.ArrowException) as e:  # not a bad row: a file that cannot be read
            if isinstance(e, InputError):
                raise
            raise CorpusError(f"{fname}: cannot be read as {shard.fmt}: {e}") from None
        return len(self.samples["text"]) + len(self.quarantine["row"]) - n_before

    def corpus(self, files: list[str]) -> Corpus:
        return Corpus(samples=pl.DataFrame(self.samples, schema=SAMPLE_SCHEMA),
                      quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA), files=files)


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
