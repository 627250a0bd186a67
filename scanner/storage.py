"""Local paths and remote URIs behind one pyarrow FileSystem, so runs read inputs from and write
results to a local disk, a shared mount or an object store alike.

Schemes pyarrow knows natively (file, s3, gs, hdfs, abfs) use its own filesystems; any other
scheme (hf://, az://, ...) goes through fsspec when fsspec and that protocol's package are
installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scanner.errors import InputError


def resolved(path: str) -> str:
    """A local path made absolute, its links followed; a symlink loop is one line, not a traceback."""
    try:
        return str(Path(path).expanduser().resolve())
    except (RuntimeError, OSError) as e:  # (Python 3.11 raises RuntimeError for a loop, later ones OSError)
        raise InputError(f"{path}: cannot be read: a symlink loop ({e})") from None


def absolute(uri) -> str:
    """A URI as it is; a local path made absolute (as a task in another working directory, or a
    later run, must see it)."""
    return str(uri) if "://" in str(uri) else resolved(str(uri))


def is_uri(path) -> bool:
    return "://" in str(path)


def split_query(uri) -> tuple[str, str]:
    """(a URI's path part, its query with the "?": s3's endpoint_override, say, or ""); a local
    path has no query, whatever its name holds."""
    uri = str(uri)
    if not is_uri(uri):
        return uri, ""
    base, mark, query = uri.partition("?")
    return base, mark + query


def without_query(uri) -> str:
    return split_query(uri)[0]


def join(uri, *parts: str) -> str:
    """A path under a folder, a local path or a URI alike; a URI's query stays at its end, where
    pyarrow reads it."""
    base, query = split_query(uri)
    return posixpath.join(base, *parts) + query


def parent(uri) -> str:
    """The folder a file or folder is in, a local path or a URI alike."""
    base, query = split_query(uri)
    return posixpath.dirname(base.rstrip("/")) + query


def _file_at(uri) -> tuple["Store", str]:
    return Store(parent(uri), create=False), posixpath.basename(without_query(uri))


def read_json_at(uri):
    """One JSON file named by its own path or URI; FileNotFoundError when there is none."""
    store, name = _file_at(uri)
    return store.read_json(name)


def read_parquet_at(uri) -> pa.Table:
    store, name = _file_at(uri)
    return store.read_parquet(name)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), resolved(uri)
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


def open_input(uri: str):
    """A seekable binary file (local or remote): readers take byte ranges or row groups from it
    without downloading the rest. Its reads are counted (bytes_read)."""
    fs, path = filesystem(uri)
    return CountedInput(fs.open_input_file(path))


_bytes_read = 0


def bytes_read() -> int:
    """Bytes this process has read through open_input: a shard's record says what reading it
    cost, and a sampled sweep shows that the files it left out were never read."""
    return _bytes_read


class CountedInput(io.RawIOBase):
    """A pyarrow input file behind Python's file interface, counting what is read from it."""

    def __init__(self, f):
        self.f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        global _bytes_read
        data = self.f.read() if n is None or n < 0 else self.f.read(n)
        _bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read_at(self, n: int, offset: int) -> bytes:
        global _bytes_read
        data = self.f.read_at(n, offset)
        _bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def size(self) -> int:
        return self.f.size()

    def close(self) -> None:
        self.f.close()
        super().close()


class Store:
    """A results folder (local or URI). Files appear whole: locally they are written to a
    temporary name and renamed; object stores publish an object only when its upload ends."""

    def __init__(self, uri: str, create: bool = True):
        self.uri = uri
        self.fs, self.root = filesystem(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if create:
            self.fs.create_dir(self.root, recursive=True)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def uri_of(self, rel: str) -> str:
        """A file's or folder's own URI (or local path), as an input of another run or a task."""
        return join(self.uri, rel)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def has_folder(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def folders(self, rel: str = "") -> list[str]:
        """Names of the folders in a folder (not recursive), sorted."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(posixpath.basename(e.path) for e in info if e.type == pafs.FileType.Directory)

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

    def write_files(self, files: dict[str, bytes]) -> None:
        """Report files (metrics.json, report.md/html, images), each whole."""
        for name, data in files.items():
            self.write_bytes(name, data)

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; FileNotFoundError when there is none."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:  # pyarrow's object stores say "not found" in their own words
            if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.NotFound:
                raise FileNotFoundError(self.path(rel)) from e
            raise

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Writes the file only where none exists; False when one does. Locally a complete file is
        hard-linked into place (atomic: a reader never sees it half-written); an object store
        writes when the name is absent and reads back (a race narrowed to the upload, not closed)."""
        final = self.path(rel)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        if self.local:
            tmp = f"{posixpath.dirname(final)}/.{posixpath.basename(final)}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.exists(rel):
            return False
        self.write_bytes(rel, data)
        return self.read_bytes(rel) == data

    def take_over(self, rel: str, token: str | None) -> None:
        """Removes a stale lock file, only if it is still the one judged stale (its JSON's token,
        None for one that is not JSON): two processes taking over at once must not remove the
        lock the faster one just made."""
        if not self.local:
            try:
                if _token(self.read_bytes(rel)) == token:
                    self.delete(rel)
            except FileNotFoundError:
                pass
            return
        final = self.path(rel)
        aside = f"{posixpath.dirname(final)}/.{posixpath.basename(final)}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(final, aside)  # atomic: of two processes, one gets the file
        except FileNotFoundError:
            return
        try:
            with open(aside, "rb") as f:
                if _token(f.read()) != token:
                    os.link(aside, final)  # a fresh lock, not the stale one: put it back
        except FileExistsError:
            pass
        finally:
            os.unlink(aside)

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        self._write(rel, lambda f: pq.write_table(table, f))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def delete_folder(self, rel: str) -> None:
        if self.has_folder(rel):
            self.fs.delete_dir(self.path(rel))

    def download(self, rel: str, local: str) -> None:
        """The files under `rel` copied into a local folder."""
        Path(local).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path(rel), local, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())

    def upload(self, local: str, rel: str) -> None:
        """A local folder's files copied under `rel` (each file whole: see _write)."""
        self.fs.create_dir(self.path(rel), recursive=True)
        pafs.copy_files(local, self.path(rel), source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def names(self, folder: str, suffix: str = "") -> list[str]:
        """File names in a folder (not recursive), sorted; temporary files are not listed."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(folder), allow_not_found=True))
        names = (posixpath.basename(e.path) for e in info if e.type == pafs.FileType.File)
        return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def cache_folder(kind: str, key: str, create: bool = True) -> Path:
    """This node's folder for `key` ($SCANNER_CACHE or ~/.cache/scanner, then kind/hash of key)."""
    root = Path(os.environ.get("SCANNER_CACHE") or Path.home() / ".cache" / "scanner") / kind
    root.mkdir(parents=True, exist_ok=True)
    folder = root / hashlib.sha256(key.encode()).hexdigest()[:16]
    if create:
        folder.mkdir(exist_ok=True)
    return folder


def local_folder(uri: str) -> str:
    """A folder (a model, an adapter) as a local path: the folder itself where it is local, else
    a copy in this node's cache ($SCANNER_CACHE or ~/.cache/scanner), fetched once per content
    (its files' names, sizes and times), so every actor of a node loads the same files."""
    fs, root = filesystem(str(uri))
    if isinstance(fs, pafs.LocalFileSystem):
        return root
    info = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = sorted((e.path, e.size, e.mtime_ns) for e in info if e.type == pafs.FileType.File)
    if not files:
        raise InputError(f"{uri}: no such folder, or it is empty")
    target = cache_folder("remote", json.dumps([str(uri), files], default=str), create=False)
    if not target.is_dir():
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir()
        pafs.copy_files(root, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            os.rename(tmp, target)  # whole or absent; another actor of the node may have been faster
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _token(data: bytes) -> str | None:
    try:
        return json.loads(data).get("token")
    except (json.JSONDecodeError, AttributeError):
        return None
