"""Deterministic fault injection, switched on by the tests through the environment of the Ray
workers: SCANNER_FAULT=<point>:<n>:<flag file> makes the process die (as a SIGKILL or an OOM
would: no cleanup, no exception) on its n-th call at that point, once; the flag file it leaves
records that, so the restarted process carries on. Unset, it costs one dictionary lookup."""

from __future__ import annotations

import os
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
