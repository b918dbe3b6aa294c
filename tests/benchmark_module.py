"""Import a script of benchmarks/ for a test of its arithmetic, leaving nothing of it importable afterwards."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator[ModuleType]:
    """benchmarks/<name>.py as a module; its sibling imports (vs_trl) resolve while it is open."""
    sys.path.insert(0, str(BENCH))
    had = "vs_trl" in sys.modules
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        if not had:
            sys.modules.pop("vs_trl", None)
