"""The rollout-engine contract, as checks any engine must pass (HF on CPU here; vLLM under tests/gpu).

Each check takes an engine built on the tiny model (or any model) and its tokenizer.
"""

from __future__ import annotations

import math

import torch

from rollout.engine import SamplingParams


def prompts_of(tokenizer) -> list[list[int]]:
    texts = ["What is 1 + 2?", "Hello there, how are you today?", "7"]
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for t in texts]


def check_shapes_and_order(engine, tokenizer):
    prompts = prompts_of(tokenizer)
    outs = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=0))
    assert [o.prompt_index for o in outs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for o in outs:
        assert 1 <= len(o.response_ids) <= 6 and len(o.logprobs) == len(o.response_ids)
        assert o.finish_reason in ("stop", "length")
        assert (o.finish_reason == "length") == (len(o.response_ids) == 6 and o.response_ids[-1] not in _eos(tokenizer))
        assert all(lp <= 1e-6 and math.isfinite(lp) for lp in o.logprobs)


def check_logprobs_match_scoring(engine, tokenizer, temperature=0.7, atol=1e-4):
    prompts = prompts_of(tokenizer)
    outs = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=5, temperature=temperature, seed=1))
    scored = engine.score([prompts[o.prompt_index] for o in outs], [o.response_ids for o in outs], temperature)
    for o, s in zip(outs, scored):
        assert torch.allclose(torch.tensor(o.logprobs), torch.tensor(s), atol=atol)


def _fresh(engine) -> None:
    """Drop an engine's prefix cache (vLLM) so that a repeated request recomputes everything: results
    must not depend on KV computed by an earlier request (bf16 kernels differ across batch shapes)."""
    reset = getattr(engine, "reset_prefix_cache", None)
    if reset is not None:
        reset()


def check_seeded_determinism(engine, tokenizer):
    prompts = prompts_of(tokenizer)
    _fresh(engine)
    a = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=6, seed=5))
    _fresh(engine)
    b = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=6, seed=5))
    assert [o.response_ids for o in a] == [o.response_ids for o in b]


def check_greedy_is_argmax(engine, tokenizer):
    prompts = prompts_of(tokenizer)
    _fresh(engine)
    a = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=4, greedy=True))
    _fresh(engine)
    b = engine.generate(prompts, SamplingParams(n=1, max_new_tokens=4, greedy=True, seed=9))
    assert [o.response_ids for o in a] == [o.response_ids for o in b]


def check_max_tokens_truncates(engine, tokenizer):
    outs = engine.generate(prompts_of(tokenizer)[:1], SamplingParams(n=4, max_new_tokens=1, seed=0))
    for o in outs:
        assert len(o.response_ids) == 1
        assert o.finish_reason == ("stop" if o.response_ids[0] in _eos(tokenizer) else "length")


def check_weight_update_changes_outputs(engine, tokenizer, named_params):
    """named_params: the model's (name, tensor) list; perturbed copies are loaded into the engine."""
    prompts = prompts_of(tokenizer)
    before = engine.score(prompts, [[5, 6, 7]] * 3, 1.0)
    g = torch.Generator().manual_seed(0)
    engine.load_weights([(n, t + 0.5 * torch.randn(t.shape, generator=g)) for n, t in named_params])
    after = engine.score(prompts, [[5, 6, 7]] * 3, 1.0)
    assert not torch.allclose(torch.tensor(before), torch.tensor(after))
    engine.load_weights(named_params)  # and back: exactly the old outputs
    assert torch.allclose(torch.tensor(engine.score(prompts, [[5, 6, 7]] * 3, 1.0)), torch.tensor(before), atol=1e-6)


def _eos(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id}
