"""One process at a time in a results folder: an exclusive lock file naming its owner, with a
heartbeat.

`lock.json` is created exclusively: on a local or mounted disk by hard-linking a complete file
into place (the link fails when the name exists, and a reader never sees a half-written lock); on
an object store by writing it when absent and reading it back, which narrows the race between two
writers to the upload's length but cannot close it. The owner rewrites its heartbeat every
HEARTBEAT_S seconds. A lock whose owner is a dead process on this host, or whose heartbeat is
older than STALE_S (a killed run on another node), is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from scanner.errors import InputError
from scanner.storage import Store

LOCK = "lock.json"
HEARTBEAT_S = 10.0
STALE_S = 120.0


_NOT_A_LOCK = {"token": None, "command": "?", "host": "", "pid": 0, "started": 0.0, "heartbeat": 0.0}


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class FolderLock:
    def __init__(self, store: Store, command: str):
        self.store, self.command = store, command
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def _record(self, started: float) -> bytes:
        return json.dumps({"token": self.token, "command": self.command, "host": socket.gethostname(),
                           "pid": os.getpid(), "started": started, "heartbeat": time.time()}).encode()

    def _held(self) -> dict | None:
        """The lock as it is now, or None when there is none."""
        try:
            data = self.store.read_bytes(LOCK)
        except FileNotFoundError:
            return None
        try:
            held = json.loads(data)
        except json.JSONDecodeError:
            held = None
        if not isinstance(held, dict) or not set(_NOT_A_LOCK) <= set(held):  # not a lock this code wrote: stale
            return _NOT_A_LOCK | {"token": held.get("token") if isinstance(held, dict) else None}
        return held

    def acquire(self) -> None:
        """Holds the folder, or raises one line naming the run that holds it."""
        for _ in range(5):
            if self.store.create_exclusive(LOCK, self._record(time.time())):
                self._beating = threading.Thread(target=self._beat, daemon=True, name="scanner-lock-heartbeat")
                self._beating.start()
                return
            held = self._held()
            if held is None:
                continue  # released (or being taken over) while we looked: try again
            if not _stale(held):
                now = time.time()
                raise InputError(
                    f"{self.store.uri} is in use by another run ({held['command']}, pid {held['pid']} on "
                    f"{held['host']}, started {_age(now - held['started'])} ago, last heartbeat "
                    f"{_age(now - held['heartbeat'])} ago); wait for it to end, or use another --out")
            self.store.take_over(LOCK, held["token"])
        raise InputError(f"{self.store.uri}: could not lock it ({LOCK} keeps changing hands); try again")

    def _beat(self) -> None:
        started = time.time()
        while not self._stop.wait(HEARTBEAT_S):
            held = self._held()
            if held is None or held["token"] != self.token:
                return  # taken over as stale (this process stalled past STALE_S): never overwrite the new owner
            self.store.write_bytes(LOCK, self._record(held.get("started", started)))

    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        held = self._held()
        if held is not None and held["token"] == self.token:
            self.store.delete(LOCK)

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _stale(held: dict) -> bool:
    if held["host"] == socket.gethostname():
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True  # its process is gone (killed): no need to wait for the heartbeat to age
        except PermissionError:
            pass  # alive, another user's
    return time.time() - held["heartbeat"] > STALE_S
