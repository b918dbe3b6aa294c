"""Append failed reward calls to a JSONL quarantine file, safely from several processes.

One line per failed (row, function) call: {"time", "fn", "spec", "status", "error",
"traceback", "row"}. Several RewardRunners (one per Ray reward actor) may share the file: each
batch is written with one write() on an O_APPEND descriptor under an exclusive flock, so lines
never interleave. Long strings in the row are cut (the start is kept) so that one pathological
completion cannot fill the disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

MAX_FIELD_CHARS = 100_000
"""Row strings longer than this are cut in the quarantine file."""


def quarantine_record(row: dict[str, Any], fn: str, spec: str, status: str, error: str | None,
                      traceback: str | None) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fn": fn,
        "spec": spec,
        "status": status,
        "error": error,
        "traceback": traceback,
        "row": {str(k): _cut(v) for k, v in row.items()},
    }


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return value[:MAX_FIELD_CHARS] + f"...[{len(value) - MAX_FIELD_CHARS} chars cut]"
    return value


def append_records(path: str, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines in a single write (values JSON cannot hold become repr strings)."""
    if not records:
        return
    data = "".join(json.dumps(r, default=repr, ensure_ascii=False) + "\n" for r in records).encode()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for safety
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)  # also releases the lock
