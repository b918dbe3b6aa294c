"""Bad input stops `python -m launch.train` in seconds with one line naming the thing and the fix.

Each case fails before any model is loaded and before any worker starts: exit status 2, no
traceback, and an `error:` line that names the key, file or row.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends


def _rows_without_prompt(tmp_path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "q", "answer": "1"}) + "\n" + json.dumps({"question": "q2", "answer": "2"}) + "\n")
    return str(path)


CASES = {
    "missing model": (lambda t: ["model.path=/nonexistent/model"], ["model.path=/nonexistent/model", "directory"]),
    "missing dataset": (lambda t: ["data.train=/nonexistent/train.jsonl"], ["data.train", "not found"]),
    "row without prompt": (lambda t: [f"data.train={_rows_without_prompt(t)}"], ["row 1", "`prompt`", "data.prompt_key"]),
    "unknown reward": (lambda t: ["reward.fns=[arithh]"], ["reward.fns", "arithh", "arith"]),
    "bad override": (lambda t: ["trainer.lrr=1e-5"], ["trainer.lrr", "trainer.lr"]),
    "unreachable ray": (lambda t: [f"ray.address=127.0.0.1:{_closed_port()}"], ["ray.address", "ray start --head"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error(case, tmp_path):
    overrides, words = CASES[case]
    cmd = [sys.executable, "-m", "launch.train", "configs/debug_cpu.yaml", f"trainer.output_dir={tmp_path / 'out'}",
           f"model.cache_dir={tmp_path / 'models'}", *overrides(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for w in words:
        assert w in line, line
    assert not (tmp_path / "models").exists()  # failed before any model was materialised


def test_every_unknown_key_gets_its_own_error_line():
    cmd = [sys.executable, "-m", "launch.train", "configs/debug_cpu.yaml", "trainer.lrr=1", "rollout.n=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "error: command line: trainer.lrr=1: unknown key; did you mean trainer.lr?",
        "error: command line: rollout.n=8: unknown key; verl's actor_rollout_ref.rollout.n is rollout.group_size here",
    ]
