"""Worker replies are untrusted: the parent accepts only well-formed JSON results."""

from __future__ import annotations

import json
import struct

import pytest

from reward.protocol import MAX_REPLY_BYTES, ProtocolError, clip, decode_reply, pop_frame


def _result(**fields) -> bytes:
    return json.dumps({"type": "result", "id": 3, "status": "ok", "reward": 1.0, "metrics": {}, **fields}).encode()


def test_well_formed_result_passes():
    assert decode_reply(_result(stratum="easy"))["stratum"] == "easy"


@pytest.mark.parametrize(
    "body",
    [
        b"\x80\x04pickle?",  # not JSON
        b'{"type": "result", "id": 3, "status": "ok", "reward": NaN, "metrics": {}}',
        _result(reward=True),
        _result(reward="1.0"),
        _result(metrics={"x": "high"}),
        _result(metrics=[1.0]),
        _result(stratum=3),
        _result(status="timeout"),  # only the parent decides that a call timed out
        _result(id="3"),
        json.dumps({"type": "result", "id": 3, "status": "error", "error": "x"}).encode(),  # no traceback
        json.dumps(["hello"]).encode(),
    ],
)
def test_malformed_replies_are_rejected(body):
    with pytest.raises(ProtocolError):
        decode_reply(body)


def test_frames_are_split_and_oversized_ones_refused():
    buf = bytearray(struct.pack(">I", 2) + b"{}" + struct.pack(">I", 5) + b"ab")
    assert pop_frame(buf) == b"{}"
    assert pop_frame(buf) is None and len(buf) == 6  # the second frame is incomplete: wait for more
    with pytest.raises(ProtocolError, match="over the"):
        pop_frame(bytearray(struct.pack(">I", MAX_REPLY_BYTES + 1)))


def test_clip_keeps_the_end():
    text = "a" * 50 + "the error"
    assert clip(text, 9).endswith("the error") and "50 chars cut" in clip(text, 9)
