"""One run per output_dir: a second run refuses to start while the first holds the lock, naming it; a SIGKILLed
run leaves no stale lock (the kernel drops a dead process's flock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launch.config import ConfigError
from launch.runlock import RunLock

ROOT = Path(__file__).resolve().parents[2]
HOLD = "import sys, time; from launch.runlock import RunLock\nwith RunLock(sys.argv[1]):\n print('held', flush=True)\n time.sleep(600)"


def test_second_run_is_refused_naming_the_first_and_a_killed_run_frees_the_directory(tmp_path):
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"trainer.output_dir={tmp_path} is in use by another run "
                                              rf"\(pid {first.pid} on .*; wait for it"):
            RunLock(tmp_path).__enter__()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    with RunLock(tmp_path):  # no stale lock after SIGKILL
        with pytest.raises(ConfigError, match=rf"pid {os.getpid()} "):
            RunLock(tmp_path).__enter__()  # and this process holds it now
    with RunLock(tmp_path):  # released on exit
        pass
