"""Which files the input arguments name: local paths, folders (searched recursively), globs, HF
`datasets.save_to_disk` folders, and the same as URIs (s3://, gs://, file://, any fsspec
protocol). Listing reads metadata only (names, sizes, mtimes, an HF folder's state.json).

Formats: JSON lines (.jsonl/.ndjson/.json, optionally .gz; a .json holding one array also
works), Parquet, CSV/TSV (optionally .gz), and the Arrow files of HF save_to_disk folders.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import posixpath
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.fs as pafs

from scanner.errors import InputError
from scanner.storage import filesystem, resolved, split_query, without_query

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
HF_MARKERS = ("state.json", "dataset_dict.json")


class CorpusError(InputError):
    """Input that cannot be read as a corpus at all (as opposed to a single bad row)."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # a resolved local path, or scheme://path
    fmt: str  # jsonl | csv | parquet | arrow
    size: int
    mtime_ns: int | None
    source: str  # the default source: the path relative to the inputs' common folder

    def to_dict(self) -> dict:
        return asdict(self)


def format_of(name: str) -> str | None:
    name = posixpath.basename(name).lower().removesuffix(".gz")
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return None


def is_compressed(uri: str) -> bool:
    return without_query(uri).lower().endswith(".gz")


def _scheme(arg: str) -> str:
    return arg.split("://", 1)[0] + "://" if "://" in arg else ""


def _has_glob(s: str) -> bool:
    return any(ch in without_query(s) for ch in "*?[")  # a URI's query is not a pattern


def _hf_arrow_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """The Arrow files of a save_to_disk folder (a Dataset, or every split of a DatasetDict)."""
    def read(name: str) -> dict:
        with fs.open_input_stream(posixpath.join(folder, name)) as f:
            return json.loads(f.read())

    if fs.get_file_info(posixpath.join(folder, "dataset_dict.json")).type == pafs.FileType.File:
        return [p for split in read("dataset_dict.json")["splits"] for p in _hf_arrow_files(fs, posixpath.join(folder, split))]
    return [posixpath.join(folder, d["filename"]) for d in read("state.json")["_data_files"]]


def _expand_folder(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Corpus files under a folder; the Arrow files of HF dataset folders stand for those folders."""
    if any(fs.get_file_info(posixpath.join(folder, m)).type == pafs.FileType.File for m in HF_MARKERS):
        return _hf_arrow_files(fs, folder)
    if isinstance(fs, pafs.LocalFileSystem):
        files = _local_files(folder)
    else:
        files = sorted(e.path for e in fs.get_file_info(pafs.FileSelector(folder, recursive=True))
                       if e.type == pafs.FileType.File)
    hf_dirs = sorted({posixpath.dirname(f) for f in files if posixpath.basename(f) in HF_MARKERS})
    inside = [f for f in files if not any(f.startswith(d + "/") for d in hf_dirs)]
    return [f for f in inside if format_of(f)] + [p for d in hf_dirs for p in _hf_arrow_files(fs, d)]


def _local_files(folder: str) -> list[str]:
    """Every file under a local folder, following symlinked folders once: a folder reached again
    by another link is not read twice, and a link back into its own ancestors is refused (it
    would list the same files at ever deeper paths)."""
    files, seen = [], {os.path.realpath(folder)}
    for here, dirs, names in os.walk(folder, followlinks=True, onerror=_raise_corpus_error):
        ancestors = {os.path.realpath(here)} | {os.path.realpath(p) for p in Path(here).parents}
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(here, d))
            if real in ancestors:
                raise CorpusError(f"{os.path.join(here, d)}: a symlink loop (it leads back to {real}); remove it or "
                                  "name the files to read")
            if real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        files += [os.path.join(here, n) for n in names if os.path.isfile(os.path.join(here, n))]
    return sorted(files)


def _raise_corpus_error(e: OSError) -> None:
    raise CorpusError(f"{e.filename}: cannot be listed: {e.strerror}")


def _expand(arg: str) -> tuple[pafs.FileSystem, str, str, list[str]]:
    fs, path = filesystem(arg)
    local = isinstance(fs, pafs.LocalFileSystem)
    if _has_glob(arg):
        if local:
            matches = [resolved(m) for m in sorted(glob.glob(path, recursive=True))]
        else:  # list from the deepest folder without a wildcard
            parts = path.split("/")
            base = "/".join(parts[: next(i for i, p in enumerate(parts) if _has_glob(p))]) or "/"
            if fs.get_file_info(base).type == pafs.FileType.NotFound:
                raise CorpusError(f"{arg}: no such file or folder")
            entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            matches = sorted(e.path for e in entries if fnmatch.fnmatch(e.path, path))
        if not matches:
            raise CorpusError(f"{arg}: the pattern matches no file")
    else:
        matches = [path]
    found = []
    for m in matches:
        info = fs.get_file_info(m)
        if info.type == pafs.FileType.NotFound:
            raise CorpusError(f"{arg}: no such file or folder")
        if info.type == pafs.FileType.Directory:
            found += _expand_folder(fs, m)
        elif format_of(m):
            found.append(m)
        elif not _has_glob(arg):
            raise CorpusError(f"{m}: unsupported file type; use JSON lines, Parquet, CSV/TSV or an HF save_to_disk folder")
    return fs, _scheme(arg) if not local else "", split_query(arg)[1], found  # every file listed keeps the query


def list_inputs(patterns: list[str]) -> list[InputFile]:
    """Every corpus file the arguments name, in a stable order, no repeats, never empty."""
    listed: dict[str, tuple[pafs.FileSystem, str]] = {}
    for arg in patterns:
        fs, prefix, query, paths = _expand(arg)
        for p in paths:  # a local file reached by two paths (links) is read once
            key = prefix + p + query if prefix or not isinstance(fs, pafs.LocalFileSystem) else os.path.realpath(p)
            listed.setdefault(key, (fs, p))
    if not listed:
        raise CorpusError(f"no readable corpus files in {' '.join(patterns)}")
    try:
        root = posixpath.commonpath([posixpath.dirname(p) for _, p in listed.values()])
    except ValueError:  # local paths mixed with object-store keys: no common folder
        root = ""
    out = []
    for uri, (fs, path) in listed.items():
        info = fs.get_file_info(path)
        mtime = info.mtime_ns if info.mtime is not None else None
        out.append(InputFile(uri=uri, fmt=format_of(path), size=int(info.size or 0), mtime_ns=mtime,
                             source=posixpath.relpath(path, root) if root else path))
    return out
