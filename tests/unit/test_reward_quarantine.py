"""Quarantine records are bounded (issue 12, item 5): one line stays under MAX_RECORD_BYTES whatever the row
holds, and says what was cut."""

from __future__ import annotations

import json
import os

from reward import RewardRunner
from reward.quarantine import MAX_RECORD_BYTES, quarantine_record

HERE = os.path.abspath(__file__)


def raises(prompt, completion, **sample):
    raise RuntimeError("boom " * 200_000)


def _row(**cols):
    return {"prompt": "p", "completion": "c", **cols}


def test_quarantine_record_is_bounded_and_says_what_was_cut():
    tests = [f"assert f({i}) == {i * i}" for i in range(250_000)]  # ~5 MB of JSON
    row = {"prompt": "p" * 1_000_000, "completion": "é" * 500_000, "tests": tests, "answer": "4", "level": 3}
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 200_000 + "RuntimeError: the end\n"
    rec = quarantine_record(row, "code", "code", "error", "x" * 1_000_000, tb)
    line = json.dumps(rec, ensure_ascii=False) + "\n"
    assert len(line.encode()) <= MAX_RECORD_BYTES
    assert rec["traceback"].endswith("RuntimeError: the end\n") and rec["traceback"].startswith("Traceback")
    assert rec["row"]["answer"] == "4" and rec["row"]["level"] == 3  # small columns are kept whole
    assert rec["row"]["tests"].startswith('["assert f(0) == 0", ') and "chars in all]" in rec["row"]["tests"]
    assert set(rec["cut"]) == {"error", "traceback", "row.prompt", "row.completion", "row.tests"}
    assert rec["cut"]["error"] == 1_000_000 and rec["cut"]["row.tests"] > 5_000_000
    many = quarantine_record({f"c{i}": "v" * 100 for i in range(5000)}, "f", "s", "error", "e", "t")
    assert len(json.dumps(many, ensure_ascii=False).encode()) < MAX_RECORD_BYTES and many["cut"]["row"] > 0
    small = quarantine_record({"prompt": "p", "completion": "c"}, "f", "s", "error", "e", "t")
    assert "cut" not in small and small["row"] == {"prompt": "p", "completion": "c"}


def test_a_huge_row_gives_a_bounded_quarantine_line(tmp_path):
    quarantine = tmp_path / "q.jsonl"
    tests = ["assert solve() == 1"] * 250_000
    with RewardRunner([f"{HERE}:raises"], timeout_s=10.0, num_workers=1, sandbox=False,
                      quarantine_path=str(quarantine)) as runner:
        [result] = runner.score([_row(tests=tests)])
    assert result.status == "error"
    [line] = quarantine.read_bytes().splitlines(keepends=True)
    assert len(line) <= MAX_RECORD_BYTES
    rec = json.loads(line)
    assert "row.tests" in rec["cut"] and rec["row"]["prompt"] == "p"
