"""Checkpoints: `checkpoints/step_N/` = every trainer rank's DeepSpeed state + the driver's state.

A checkpoint is written into `checkpoints/.tmp-step_N/` and renamed to `step_N/` only once every
rank and the driver have finished writing, with a `COMPLETE` marker inside; a kill during a save
therefore never leaves a directory that `latest()` would pick. Only the newest `keep_last`
complete checkpoints are kept. On a multi-node cluster `trainer.output_dir` must be shared storage.
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
    (tmp / MARKER).write_text(str(step))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(root, keep_last)
    return final


def latest(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return None
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
    for p in root.glob(".tmp-step_*"):  # leftovers of a killed save
        shutil.rmtree(p, ignore_errors=True)
