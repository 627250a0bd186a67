"""Progress lines for long work."""

from __future__ import annotations

import sys
import time


class Progress:
    """Timestamped progress lines on stderr (stdout stays for results)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[scanner +{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
