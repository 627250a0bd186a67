"""Deterministic fault injection, switched on by the tests through the environment of the Ray
workers: SCANNER_FAULT=<point>:<n>:<flag file> makes the process die (as a SIGKILL or an OOM
would: no cleanup, no exception) on its n-th call at that point, once; the flag file it leaves
records that, so the restarted process carries on. SCANNER_PAUSE=<point>:<gate file> makes the
process stop at that point until the gate file exists, after writing <gate file>.reached: a test
knows, without racing a timer, that a run is inside that point. Unset, each costs one dictionary
lookup."""

from __future__ import annotations

import os
import time
from collections import Counter

_calls: Counter = Counter()


def maybe_fail(point: str) -> None:
    spec = os.environ.get("SCANNER_FAULT")
    if not spec:
        return
    name, n, flag = spec.split(":", 2)
    if name != point:
        return
    _calls[point] += 1
    if _calls[point] >= int(n) and not os.path.exists(flag):
        with open(flag, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)


def maybe_pause(point: str) -> None:
    spec = os.environ.get("SCANNER_PAUSE")
    if not spec:
        return
    name, gate = spec.split(":", 1)
    if name != point:
        return
    with open(f"{gate}.reached", "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(gate):
        time.sleep(0.05)
