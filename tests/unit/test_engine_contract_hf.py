"""The rollout-engine contract against the Hugging Face engine on CPU (tiny random model)."""

from __future__ import annotations

import pytest
import torch

from rollout.engine import SamplingParams
from rollout.hf_engine import HFEngine
from tests import engine_contract as contract


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir, batch_size=4)


@pytest.mark.parametrize("check", [contract.check_shapes_and_order, contract.check_logprobs_match_scoring,
                                   contract.check_seeded_determinism, contract.check_greedy_is_argmax,
                                   contract.check_max_tokens_truncates], ids=lambda f: f.__name__)
def test_contract(engine, check):
    check(engine, engine.tokenizer)


def test_weight_update_changes_outputs(engine):
    named = [(n, p.detach().clone()) for n, p in engine.model.named_parameters()]
    contract.check_weight_update_changes_outputs(engine, engine.tokenizer, named)


def test_unknown_weight_name_is_an_error(engine):
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        engine.load_weights([("nope", torch.zeros(1))])


def test_stop_string_ends_the_response(engine):
    tok = engine.tokenizer
    prompts = contract.prompts_of(tok)
    free = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=3))
    # pick a character the free run produced, then ask to stop at it
    text = tok.decode(free[0].response_ids)
    stop = next(ch for ch in text if ch.isalnum())
    outs = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=3, stop=[stop]))
    for o in outs:
        decoded = tok.decode(o.response_ids)
        if o.finish_reason == "stop" and o.response_ids[-1] != tok.eos_token_id:
            assert decoded.endswith(stop) or stop in decoded[-8:]
            assert stop not in tok.decode(o.response_ids[:-1])
    assert any(o.finish_reason == "stop" for o in outs)
