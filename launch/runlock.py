"""One run per output directory: `RunLock(output_dir)` holds an exclusive lock for the run's lifetime.

Two runs on the same `trainer.output_dir` would interleave metrics, prune each other's checkpoints and resume
from each other's state. The lock is `flock` on `<output_dir>/.lock`: the kernel drops it when the process
exits however it exits (SIGKILL included), so a killed run never leaves a stale lock. The file records who
holds it, for the second run's error message. Shared storage that does not implement flock (some NFS setups)
makes the lock advisory only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from launch.config import ConfigError


class RunLock:
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise ConfigError(f"trainer.output_dir={self.path.parent} is in use by another run ({holder}); wait for "
                              f"it to finish or stop it, or choose another trainer.output_dir") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        o = json.loads(raw)
        return f"pid {o['pid']} on {o['host']}, started {o['started']}: {o['command']}"
    except (ValueError, KeyError, TypeError):
        return "its owner did not record itself"
