"""Shared fixtures: a tiny random model directory built in code (no downloads), a JSONL dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest



@pytest.fixture(scope="session", autouse=True)
def quiet_environment():
    """No tokenizer thread pools, no wandb network for the whole session; restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "false"))
        mp.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "disabled"))
        yield


@pytest.fixture(autouse=True)
def no_global_state_leaks():
    """Every test starts from the same process state and leaves none behind: torch's thread count and
    default dtype (a test that changes them fails), the global RNG and the environment (restored after
    every test). A test that changes or removes an existing environment variable fails; variables that
    appear (libraries set some the first time they are imported, e.g. deepspeed, torch inductor) are
    removed again, so what the next test sees never depends on the order tests run in."""
    import torch

    before = (torch.get_num_threads(), torch.get_default_dtype())
    rng, env = torch.random.get_rng_state(), dict(os.environ)
    yield
    after = (torch.get_num_threads(), torch.get_default_dtype())
    changed = sorted(k for k in env if os.environ.get(k) != env[k] and k != "PYTEST_CURRENT_TEST")  # pytest's own
    torch.set_num_threads(before[0])
    torch.set_default_dtype(before[1])
    torch.random.set_rng_state(rng)
    os.environ.clear()
    os.environ.update(env)
    assert after == before, f"the test changed torch's threads/default dtype: {before} -> {after}"
    assert not changed, f"the test changed or removed environment variables {changed}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from launch.models import resolve_model

    return resolve_model("tiny-random", str(tmp_path_factory.mktemp("models")))


@pytest.fixture()
def jsonl_dataset(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"question": f"What is {i} + 1?", "solution": str(i + 1), "data_source": "toy"} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
