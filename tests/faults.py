"""Fault injection for the Ray tests."""

import os
import signal
import time
from pathlib import Path


def kill_scoring_actor_once(after_seconds: float, killed: list) -> None:
    """SIGKILL the process of a live scoring actor (found by its Ray process title), once."""
    t0 = time.time()
    while time.time() - t0 < 300 and not killed:
        if time.time() - t0 > after_seconds:
            for proc in Path("/proc").iterdir():
                try:
                    title = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if proc.name.isdigit() and title.startswith("ray::MapWorker") and "ScoreActor" in title:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                    return
        time.sleep(0.3)
