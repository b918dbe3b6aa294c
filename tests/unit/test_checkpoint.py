"""launch/checkpoint.py: a re-save of an existing step killed (SIGKILL, a real process) between moving the old
copy aside and renaming the new one in still leaves a complete checkpoint, which `latest()` picks."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from launch import checkpoint

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from launch import checkpoint

    out, kill = Path(sys.argv[1]), sys.argv[2] == "kill"

    def save_trainer(directory, tag):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "weights.bin").write_bytes(b"x" * 1000)

    real_replace = os.replace
    def replace(src, dst):
        if kill and Path(src).name.startswith(".tmp-"):  # the new copy is about to take the old one's place
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    os.replace = replace
    checkpoint.save(out, 2, {"version": sys.argv[3]}, save_trainer, keep_last=1)
''')


def _save(out: Path, mode: str, version: str) -> int:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), mode, version], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=120).returncode


def test_resave_killed_between_renames_keeps_a_complete_copy(tmp_path):
    assert _save(tmp_path, "ok", "first") == 0
    assert _save(tmp_path, "kill", "second") == -signal.SIGKILL
    path = checkpoint.latest(tmp_path)
    assert path == tmp_path / "checkpoints" / "step_2"
    assert checkpoint.load_driver_state(path) == {"version": "first"}  # the old, complete copy
    assert (path / "trainer" / "weights.bin").stat().st_size == 1000

    assert _save(tmp_path, "ok", "third") == 0  # a later save of the same step replaces it cleanly
    assert checkpoint.load_driver_state(checkpoint.latest(tmp_path)) == {"version": "third"}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]


def test_keep_last_and_leftovers_of_a_killed_save(tmp_path):
    def save_trainer(directory: str, tag: str) -> None:
        Path(directory).mkdir(parents=True)
        torch.save({"w": torch.ones(2)}, Path(directory) / "w.pt")

    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, save_trainer, keep_last=2)
    (tmp_path / "checkpoints" / ".tmp-step_4").mkdir()  # a save killed before its marker
    assert checkpoint.latest(tmp_path).name == "step_3"
    checkpoint.save(tmp_path, 4, {"step": 4}, save_trainer, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4"]
