"""A policy-loss term plugged in from config: the CISPO file of docs/algorithms.md ("Plugging in a policy-loss
term"), taken from the page itself, gives the paper's gradient on both loss paths and trains end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rl.loss_config import LossConfig, LossInputs
from rl.losses import policy_loss
from rl.ops import fused_policy_loss

from .conftest import debug_config, ones_reward

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


@pytest.fixture
def cispo_spec(tmp_path) -> str:
    blocks = re.findall(r"```python\n(# cispo\.py\n.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/algorithms.md must hold exactly one `# cispo.py` block"
    assert len(blocks[0].splitlines()) < 30
    path = tmp_path / "cispo.py"
    path.write_text(blocks[0])
    return f"{path}:cispo"


def test_cispo_gradient_is_the_clipped_weight_times_advantage_on_both_paths(cispo_spec):
    # r = [0.5, 1, 4, 1.5] with eps_high_is = 1: r̂ = [0.5, 1, 2, 1.5]; d/dℓ of −sg(r̂)·A·ℓ = −r̂·A. The third
    # token is clipped and still gets a gradient (PPO's clip would give it none for A > 0).
    cfg = LossConfig(term=cispo_spec, term_params={"eps_high_is": 1.0})
    old = torch.tensor([[-1.0, -2.0, -3.0, -0.5]])
    logprobs = (old + torch.tensor([[0.5, 1.0, 4.0, 1.5]]).log()).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 2.0, 0.5]])
    mask = torch.ones(1, 4)
    loss, metrics = policy_loss(logprobs, LossInputs(old, adv, mask), cfg)
    loss.backward()
    expected = -torch.tensor([[0.5, 1.0, 2.0, 1.5]]) * adv / 4  # token-mean over 4 tokens
    torch.testing.assert_close(logprobs.grad, expected)
    assert metrics["actor/pg_clipfrac_high"] == pytest.approx(0.25)
    assert metrics["actor/ratio_max"] == pytest.approx(4.0, rel=1e-6)

    # the fused op differentiates the same term chunk by chunk: hidden-state gradients agree with the
    # unfused path through the same head
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=g, requires_grad=True)
    weight = (0.5 * torch.randn(11, 8, generator=g)).requires_grad_(True)
    targets = torch.randint(0, 11, (6,), generator=g)
    lp_now = torch.log_softmax(hidden.detach() @ weight.detach().t(), -1).gather(-1, targets[:, None])[:, 0]
    inputs = LossInputs(lp_now + 0.3 * torch.randn(6, generator=g), torch.randn(6, generator=g))
    fused, _ = fused_policy_loss(hidden, weight, targets, inputs, cfg, chunk_size=4)
    fused.backward()
    h2, w2 = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    lp = torch.log_softmax(h2 @ w2.t(), -1).gather(-1, targets[:, None])[:, 0]
    unfused, _ = policy_loss(lp[None], LossInputs(inputs.old_logprobs[None], inputs.advantages[None],
                                                  torch.ones(1, 6)), cfg)
    unfused.backward()
    torch.testing.assert_close(fused, unfused)
    torch.testing.assert_close(hidden.grad, h2.grad)
    torch.testing.assert_close(weight.grad, w2.grad)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cispo_plugin_trains_end_to_end(ray_cluster, tmp_path, cispo_spec):
    from launch.loop import run

    common = ["trainer.total_steps=2", "trainer.eval_every=0", "trainer.save_every=0", "trainer.mini_batches=2",
              f"reward.fns=[{ones_reward(tmp_path)}]"]
    cispo = run(debug_config(tmp_path / "cispo", *common, f"algorithm.loss.term={cispo_spec}",
                             "algorithm.loss.term_params={eps_high_is: 2.0}"))
    ppo = run(debug_config(tmp_path / "ppo", *common))
    a, b = [[r for r in _records(out) if r.get("step", 0) >= 1] for out in (cispo, ppo)]
    assert [r["step"] for r in a] == [1, 2] and (cispo / "final").is_dir()
    # same seeds, same samples at step 1; the trainer ranks ran the plug-in: CISPO's loss value is
    # −Σ r̂·A·ℓ/N, PPO's −Σ r·A/N
    assert a[0]["reward/mean"] == b[0]["reward/mean"]
    assert a[0]["actor/num_tokens"] > 0
    assert a[0]["loss/policy"] != pytest.approx(b[0]["loss/policy"], abs=1e-6)
    assert all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in a)
