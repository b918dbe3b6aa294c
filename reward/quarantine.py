"""Append failed reward calls to a JSONL quarantine file, safely from several processes.

One line per failed (row, function) call: {"time", "fn", "spec", "status", "error",
"traceback", "row"}, plus "cut" when something was shortened. Several RewardRunners (one per Ray
reward actor) may share the file: each batch is written with one write() on an O_APPEND
descriptor under an exclusive flock, so lines never interleave.

Every record is bounded: one line is at most MAX_RECORD_BYTES of UTF-8 JSON, whatever the row
holds (a 5 MB `tests` list, a megabyte completion, thousands of columns). The error is cut to
MAX_ERROR_CHARS, the traceback to MAX_TRACEBACK_CHARS (its start and its end, where the exception
is, are kept), fn and spec to MAX_NAME_CHARS, and each row column to what is left, shared among
the columns (a long string keeps its start; a large list or dict becomes the start of its JSON
text, as a string). `cut` maps each shortened field ("error", "traceback", "row.tests", ...) to
its size before, in characters of text or bytes of JSON; "row" alone means columns were dropped.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

MAX_RECORD_BYTES = 64 * 1024
"""Upper bound of one quarantine line (UTF-8 JSON, newline included)."""
MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 16_000
MAX_NAME_CHARS = 1_000
"""fn and spec."""
MAX_FIELD_CHARS = 8_000
"""A row column never gets more than this (bytes of JSON), however many columns share the budget."""
_MIN_FIELD = 64


def quarantine_record(row: dict[str, Any], fn: str, spec: str, status: str, error: str | None,
                      traceback: str | None) -> dict[str, Any]:
    cut: dict[str, int] = {}
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fn": _cut_text(str(fn), MAX_NAME_CHARS, "fn", cut),
        "spec": _cut_text(str(spec), MAX_NAME_CHARS, "spec", cut),
        "status": _cut_text(str(status), MAX_NAME_CHARS, "status", cut),
        "error": None if error is None else _cut_text(str(error), MAX_ERROR_CHARS, "error", cut),
        "traceback": None if traceback is None else _cut_middle(str(traceback), MAX_TRACEBACK_CHARS, cut),
    }
    fixed = dict(cut)
    room = MAX_RECORD_BYTES - _size({**record, "row": {}, "cut": fixed}) - 1
    for _ in range(3):  # the `cut` map takes room too: shrink the row's share until the whole line fits
        cut = dict(fixed)
        out = {**record, "row": _fit_row(row, room, cut), **({"cut": cut} if cut else {})}
        over = _size(out) + 1 - MAX_RECORD_BYTES
        if over <= 0:
            return out
        room -= over + 64
    # never write past the bound (not reached with the budgets above)
    return {**record, "row": {}, "cut": {**fixed, "row": _size(row)}}


def _size(value: Any) -> int:
    return len(json.dumps(value, default=repr, ensure_ascii=False).encode())


def _cut_text(text: str, limit: int, name: str, cut: dict[str, int]) -> str:
    if len(text) <= limit:
        return text
    cut[name] = len(text)
    return text[:limit] + f"...[{len(text) - limit} chars cut]"


def _cut_middle(text: str, limit: int, cut: dict[str, int]) -> str:
    """The start and the end (a traceback ends with the exception) of a long text."""
    if len(text) <= limit:
        return text
    cut["traceback"] = len(text)
    head = limit // 4
    return text[:head] + f"\n...[{len(text) - limit} chars cut]...\n" + text[-(limit - head):]


def _fit_row(row: dict[str, Any], room: int, cut: dict[str, int]) -> dict[str, Any]:
    """The row with each column shortened so that all of them fit in `room` bytes of JSON."""
    keys = [str(k) for k in row]
    sizes = {k: _size(v) for k, v in zip(keys, row.values())}
    out: dict[str, Any] = {}
    left = room
    # water-filling: the smallest columns first, each gets at most an equal share of what is left
    for n, (key, value) in enumerate(sorted(zip(keys, row.values()), key=lambda kv: sizes[kv[0]])):
        share = min(MAX_FIELD_CHARS, (left - 2) // (len(keys) - n) - _size(key) - 2)
        if share < _MIN_FIELD and sizes[key] > share:
            cut["row"] = _size(row)  # too many columns for the bound: the rest are dropped
            break
        if sizes[key] > share:
            cut[f"row.{key}"] = sizes[key]
            value = _shorten(value, share)
        out[key] = value
        left -= _size(key) + _size(value) + 2
    return {k: out[k] for k in keys if k in out}  # the row's own column order


def _shorten(value: Any, budget: int) -> str:
    """A string of at most `budget` bytes of JSON: the start of the text (or of the JSON of a non-string)."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr, ensure_ascii=False)
    keep = budget
    while True:
        short = text[:keep] + f"...[cut: {len(text)} chars in all]"
        if _size(short) <= budget or keep == 0:
            return short
        keep = max(0, min(keep - 1, int(keep * 0.8)))


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
