"""Length-prefixed messages between the pool (parent) and its worker processes.

Parent -> worker messages are pickles: they come from the trusted side and carry dataset rows
of any type. Worker -> parent messages are JSON, and the parent checks their shape: a worker
runs untrusted code that can write anything to its end of the pipe, and unpickling that in the
parent would hand it the parent.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

MAX_REPLY_BYTES = 4 << 20
"""A worker reply longer than this is a protocol violation (the worker is replaced)."""
MAX_TEXT_CHARS = 20_000
"""Tracebacks and output tails are cut to this many characters (the end is kept)."""
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The worker sent something that is not a well-formed reply."""


def frame(payload: bytes) -> bytes:
    """The bytes of one message: a 4-byte big-endian length, then the payload."""
    return _HEADER.pack(len(payload)) + payload


def write_frame(fd: int, payload: bytes) -> None:
    """Blocking write of one frame (worker side; the parent writes non-blocking, from its selector loop)."""
    data = memoryview(frame(payload))
    while data:
        data = data[os.write(fd, data):]


def read_frame(fd: int) -> bytes | None:
    """Blocking read of one frame (worker side); None at EOF."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exactly(fd, _HEADER.unpack(header)[0])
    if body is None:
        raise EOFError("pipe closed in the middle of a message")
    return body


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def pop_frame(buf: bytearray) -> bytes | None:
    """Take one complete frame off the front of a non-blocking read buffer (parent side)."""
    if len(buf) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack_from(buf)
    if size > MAX_REPLY_BYTES:
        raise ProtocolError(f"reply of {size} bytes is over the {MAX_REPLY_BYTES}-byte limit")
    if len(buf) < _HEADER.size + size:
        return None
    body = bytes(buf[_HEADER.size : _HEADER.size + size])
    del buf[: _HEADER.size + size]
    return body


def encode_reply(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, allow_nan=False, default=str).encode()


def _reject_constant(name: str) -> float:
    raise ProtocolError(f"non-finite number {name} in reply")


def decode_reply(body: bytes) -> dict[str, Any]:
    """Parse and check a worker reply: {"type": "hello" | "result", ...}."""
    try:
        reply = json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProtocolError(f"reply is not JSON ({exc})") from None
    if not isinstance(reply, dict) or reply.get("type") not in ("hello", "result"):
        raise ProtocolError("reply is not a hello or result message")
    if reply["type"] == "result":
        _check_result(reply)
    return reply


def _check_result(reply: dict[str, Any]) -> None:
    if not isinstance(reply.get("id"), int) or reply.get("status") not in ("ok", "error"):
        raise ProtocolError("result without an integer id and an ok/error status")
    if reply["status"] == "ok" and "text" in reply:  # a tool's observation (rollout/tools.py)
        if not isinstance(reply["text"], str):
            raise ProtocolError("ok tool result whose text is not a string")
    elif reply["status"] == "ok":
        reward, metrics, stratum = reply.get("reward"), reply.get("metrics"), reply.get("stratum")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise ProtocolError("ok result without a finite reward")
        if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in metrics.items()
        ):
            raise ProtocolError("ok result whose metrics are not {str: number}")
        if stratum is not None and not isinstance(stratum, str):
            raise ProtocolError("ok result whose stratum is not a string")
    else:
        for key in ("error", "traceback"):
            if not isinstance(reply.get(key), str):
                raise ProtocolError(f"error result without a string {key!r}")
            reply[key] = clip(reply[key])


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Keep the end of a long text (where a traceback says what went wrong)."""
    return text if len(text) <= limit else f"...[{len(text) - limit} chars cut]...\n" + text[-limit:]
