"""Local paths and remote URIs behind one pyarrow FileSystem, so a sweep reads shards from and
writes results to a local disk, a shared mount or an object store alike.

Schemes pyarrow knows natively (file, s3, gs, hdfs, abfs) use its own filesystems; any other
scheme (hf://, az://, ...) goes through fsspec when fsspec and that protocol's package are
installed.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scanner.errors import InputError


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        import fsspec
    except ImportError:
        raise InputError(f"{uri}: pyarrow cannot open this scheme; install fsspec and its protocol package") from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise InputError(f"{uri}: {e}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if "://" in uri else ""


def list_files(patterns: list[str], keep) -> list[str]:
    """URIs of the files named by each pattern: a file, a folder (searched recursively) or a glob;
    `keep(name)` says which file names count. Sorted per pattern, no repeats, never empty."""
    found: list[str] = []
    for pattern in patterns:
        fs, path = filesystem(pattern)
        prefix = _scheme(pattern) if "://" in pattern and not isinstance(fs, pafs.LocalFileSystem) else ""
        has_glob = any(ch in path for ch in "*?[")
        base = path
        if has_glob:  # list from the deepest folder without a wildcard
            parts = path.split("/")
            cut = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
            base = "/".join(parts[:cut]) or "/"
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"{pattern}: no such file or folder")
        if info.type == pafs.FileType.File:
            names = [base]
        else:
            entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
            names = sorted(e.path for e in entries if e.type == pafs.FileType.File)
        if has_glob:
            names = [n for n in names if fnmatch.fnmatch(n, path)]
        names = [n for n in names if keep(posixpath.basename(n))]
        if not names:
            raise InputError(f"{pattern}: no corpus files found")
        found += [prefix + n for n in names]
    return list(dict.fromkeys(found))


@contextmanager
def local_copy(uri: str):
    """A local path holding the file: the file itself when local, else a temporary download that
    keeps the file's name (readers pick the format from it)."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="scanner-") as tmp:
        dest = Path(tmp) / posixpath.basename(path)
        with fs.open_input_stream(path) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        yield dest


class Store:
    """A results folder (local or URI). Files appear whole: locally they are written to a
    temporary name and renamed; object stores publish an object only when its upload ends."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = filesystem(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.root, recursive=True)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def _write(self, rel: str, write) -> None:
        final = self.path(rel)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        target = f"{posixpath.dirname(final)}/.{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp" if self.local else final
        with self.fs.open_output_stream(target) as f:
            write(f)
        if target != final:
            self.fs.move(target, final)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._write(rel, lambda f: f.write(data))

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2).encode())

    def read_json(self, rel: str):
        with self.fs.open_input_stream(self.path(rel)) as f:
            return json.loads(f.read())

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        self._write(rel, lambda f: pq.write_table(table, f))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))
