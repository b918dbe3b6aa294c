"""Shared fixtures: a tiny random model directory built in code (no downloads), a JSONL dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


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
