"""Our top-level packages stay ours when a user's file has the same name (`reward.py` in the working directory).

`python -m launch.train` puts the working directory first on sys.path, and Ray puts the driver's working
directory first on every worker's sys.path (its `py_driver_sys_path`), so a user's `reward.py`, `rl.py` or
`rollout.py` next to their recipe would be imported in place of our package and the run would die in an
ImportError far from the cause. `pin()` imports our packages while their own root is first on sys.path, then
restores sys.path: later imports of their submodules go through each package's `__path__`, never sys.path
again, and the working directory stays importable for the user's own modules (`reward.fns=[my_rewards:fn]`).
launch/train.py pins in the driver, launch/cluster.py in every Ray worker (a setup hook); the reward pool
starts its processes in their own directories (reward/pool.py). A `launch.py` there cannot be helped from
here: Python resolves `launch` before any of our code runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PACKAGES = ("launch", "rl", "rollout", "reward")


def pin() -> None:
    """Import PACKAGES from the directory that holds them (the checkout, or site-packages)."""
    root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, root)
    try:
        for name in PACKAGES:
            importlib.import_module(name)
    finally:
        sys.path.remove(root)
