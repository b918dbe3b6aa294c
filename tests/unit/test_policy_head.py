"""The trainer's hidden-state loss path must compute the model's own next-token distribution: dropout is
off, known logit scalings are folded into the temperature, and anything else is refused at load."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig,
                          GraniteForCausalLM, LlamaConfig, LlamaForCausalLM)

from rl.batch import collate
from rl.policy import PolicyModule, UnsupportedHeadError, check_head
from rl.types import Sample

SMALL = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _build(model_cls, config_cls, **extra):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return model_cls(config_cls(**SMALL, **extra)).eval()


def _policy_logprobs(policy: PolicyModule, prompt: list[int], response: list[int], temperature: float):
    sample = Sample(0, 0, prompt, response, [0.0] * len(response), "stop", 0, advantage=0.0)
    mb = collate([sample], [0], 0, [True])
    with torch.no_grad():
        return policy(mb, mode="logprobs", temperature=temperature)


@pytest.mark.parametrize("model_cls, config_cls, extra, scale", [
    (CohereForCausalLM, CohereConfig, {"logit_scale": 0.0625}, 0.0625),  # logits · logit_scale
    (GraniteForCausalLM, GraniteConfig, {"logits_scaling": 4.0}, 0.25),  # logits / logits_scaling
    (LlamaForCausalLM, LlamaConfig, {}, 1.0),
])
def test_logit_scaling_is_folded_into_the_temperature(model_cls, config_cls, extra, scale):
    model = _build(model_cls, config_cls, **extra)
    policy = PolicyModule(model)
    assert policy.logit_scale == pytest.approx(scale)
    prompt, response, t = [1, 5, 7], [3, 9, 2], 0.7
    got = _policy_logprobs(policy, prompt, response, t)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1]
    want = torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_logit_softcapping_is_refused():
    model = _build(Gemma2ForCausalLM, Gemma2Config, head_dim=8, final_logit_softcapping=30.0)
    with pytest.raises(UnsupportedHeadError, match="final_logit_softcapping"):
        PolicyModule(model)


def test_head_bias_is_refused():
    model = _build(LlamaForCausalLM, LlamaConfig, tie_word_embeddings=False)
    model.lm_head = nn.Linear(32, 40, bias=True)
    with pytest.raises(UnsupportedHeadError, match="bias"):
        check_head(model)


def test_an_unknown_logit_transform_is_refused():
    class Shifted(LlamaForCausalLM):  # a head transform no config key announces
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = 3.0 * out.logits
            return out

    with pytest.raises(UnsupportedHeadError, match="differ"):
        check_head(_build(Shifted, LlamaConfig))


def test_dropout_is_off_in_train_mode():
    model = _build(LlamaForCausalLM, LlamaConfig, attention_dropout=0.5)
    model.model.layers[0].mlp.act_fn = nn.Sequential(nn.SiLU(), nn.Dropout(0.5))  # a dropout module too
    policy = PolicyModule(model).train()
    a = _policy_logprobs(policy, [1, 5, 7], [3, 9, 2], 1.0)
    b = _policy_logprobs(policy, [1, 5, 7], [3, 9, 2], 1.0)
    assert torch.equal(a, b)
    assert model.config.attention_dropout == 0.0
