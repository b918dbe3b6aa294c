"""Checkpoints: `checkpoints/step_N/` = every trainer rank's DeepSpeed state + the driver's state.

A checkpoint is written into `checkpoints/.tmp-step_N/`, flushed to disk (fsync), and renamed to `step_N/`
only once every rank and the driver have finished writing, with a `COMPLETE` marker inside; a kill during a
save therefore never leaves a directory that `latest()` would pick. Re-saving an existing step first moves the
old copy aside to `.old-step_N/` (one rename), so a kill between the two renames still leaves a complete copy,
which `latest()` takes back. Only the newest `keep_last` complete checkpoints are kept. On a multi-node cluster `trainer.output_dir` must be shared storage.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

MARKER = "COMPLETE"
_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(output_dir: str | Path, step: int, driver_state: dict[str, Any],
         save_trainer: Callable[[str, str], None], keep_last: int) -> Path:
    """save_trainer(directory, tag) must write every rank's state (a collective call)."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_trainer(str(tmp / "trainer"), "state")
    torch.save(driver_state, tmp / "driver_state.pt")
    _fsync_tree(tmp)  # every byte on disk before the marker says so
    (tmp / MARKER).write_text(str(step))
    _fsync(tmp / MARKER)
    _fsync(tmp)
    old = root / f".old-step_{step}"
    if final.exists():  # never delete the only complete copy before its replacement is in place
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(root)
    shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep_last)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for dirpath, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def latest(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return None
    for old in root.glob(".old-step_*"):  # a re-save killed between its two renames: take the old copy back
        final = root / old.name.removeprefix(".old-")
        if (old / MARKER).is_file() and not final.exists():
            os.replace(old, final)
    done = [(int(m.group(1)), p) for p in root.iterdir()
            if (m := _STEP.match(p.name)) and (p / MARKER).is_file()]
    return max(done)[1] if done else None


def load_driver_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker); "
                                f"use trainer.resume=auto to pick the newest complete one")
    return torch.load(path / "driver_state.pt", weights_only=False)


def _prune(root: Path, keep_last: int) -> None:
    done = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)))
    for _, p in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:  # leftovers of a killed save
        shutil.rmtree(p, ignore_errors=True)
