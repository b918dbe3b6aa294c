"""benchmarks/replay_ablation.py end to end on the tiny model: both arms are real `launch.train` runs.

With one step per arm, both arms start from the same weights with the same seeds, so they generate the
same tokens; the budget from the `off` arm then stops the `on` arm after that step too. What replay adds is
visible in the counts: the `on` arm trains a full batch of informative rows (fresh + drawn from the buffer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ones_reward

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_ablation_arms_share_the_token_budget_and_replay_fills_the_batch(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "benchmarks/replay_ablation.py", "--config", "configs/debug_cpu.yaml", "--steps", "1",
         "--out", str(tmp_path / "ablation"), f"reward.fns=[{ones_reward(tmp_path)}]",
         f"model.cache_dir={tmp_path / 'models'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    off, on = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert (off["arm"], on["arm"]) == ("off", "on")
    assert off["steps"] == on["steps"] == 1
    assert on["generated_tokens"] == off["generated_tokens"] > 0  # same weights, same seeds: the same generation
    assert 0 < off["informative_samples"] < 16  # debug_cpu: 4 prompts x 4 answers; some groups have no signal
    assert on["informative_samples"] == 16  # topped up from the buffer to a full batch
    assert on["replayed_samples"] == 16 - off["informative_samples"] and off["replayed_samples"] == 0
    assert on["tokens_per_informative_sample"] < off["tokens_per_informative_sample"]
    assert set(off["eval_accuracy"]) == {"0", "1"} == set(on["eval_accuracy"])  # before training and the last step
