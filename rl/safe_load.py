"""Load checkpoint files without running code from them.

A pickle can name any importable callable and have the unpickler call it, so a file planted in a run's
output_dir would run code the moment a resume loads it. Every checkpoint file is therefore read with
`torch.load(..., weights_only=True)`: torch's restricted unpickler builds only containers, numbers, strings,
tensors and the classes a caller allow-lists, and refuses everything else before calling it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds more than plain containers, tensors and the allow-listed classes."""


def load_weights_only(path: str | Path, allow: tuple[type, ...] = (),
                      map_location: str | torch.device | Callable | None = None) -> Any:
    """torch.load(path, weights_only=True), with the classes in `allow` accepted as well; a refusal names the file."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        reason = next((line for line in reversed(lines) if not line.startswith("Check the documentation")), str(e))
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds more than the tensors, containers and allow-listed classes a "
            f"checkpoint file may hold ({reason}). Loading it could run code from it; it may have been planted, "
            f"corrupted or written by other software. Restore it from a copy you trust, or resume from another "
            f"checkpoint (trainer.resume=<path>) or none (trainer.resume=never)") from None
