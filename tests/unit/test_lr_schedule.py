"""`trainer.lr_scheduler`: the lr of every update from the construction the trainer uses (rl.lr_schedule),
against closed forms written out here; and the schema's checks."""

from __future__ import annotations

import math

import pytest
import torch

from launch.config import ConfigError, TrainerConfig
from rl.lr_schedule import make_lr_scheduler

LR = 0.5


def _lrs(name: str, warmup: int, total: int) -> list[float]:
    """The lr of each of `total` updates, then the lr after the last one (as the trainer drives it: the
    optimizer steps, then the scheduler)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=LR)
    scheduler = make_lr_scheduler(optimizer, name, warmup, total)
    out = []
    for _ in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out + [optimizer.param_groups[0]["lr"]]


def test_constant_keeps_the_trainers_warm_up():
    # update k at lr·min(1, (k+1)/W): what LambdaLR(min(1, (s+1)/W)) gave before the schedules existed
    assert _lrs("constant", 4, 6) == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR, LR, LR, LR])
    assert _lrs("constant", 0, 3) == _lrs("constant", 1, 3) == [LR] * 4


def test_linear_with_warm_up_2_over_10_updates():
    # warm-up: update 0 at lr/2, update 1 at lr; then linear from lr at update 1 to 0 at update 10:
    # update k at lr·(10 - k)/9
    expected = [LR / 2, LR] + [LR * (10 - k) / 9 for k in range(2, 10)] + [0.0]
    assert _lrs("linear", 2, 10) == pytest.approx(expected, abs=1e-12)
    assert expected[-2] == pytest.approx(LR / 9)  # the last update still trains


def test_linear_without_warm_up_is_transformers_plain_decay():
    assert _lrs("linear", 0, 4) == pytest.approx([LR, 3 * LR / 4, LR / 2, LR / 4, 0.0], abs=1e-12)


def test_cosine():
    lrs = _lrs("cosine", 0, 10)  # update k at lr·½(1 + cos(πk/10))
    assert lrs == pytest.approx([LR * 0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(11)], abs=1e-12)
    assert lrs[0] == LR and lrs[5] == pytest.approx(LR / 2) and lrs[10] == pytest.approx(0.0, abs=1e-12)
    warm = _lrs("cosine", 3, 10)  # warm-up to lr at update 2, then cosine over the 8 updates to update 10
    assert warm[:3] == pytest.approx([LR / 3, 2 * LR / 3, LR])
    assert warm[2:] == pytest.approx([LR * 0.5 * (1 + math.cos(math.pi * j / 8)) for j in range(9)], abs=1e-12)


def test_schema_checks_the_schedule():
    assert TrainerConfig().lr_scheduler == "linear"  # the late-run stability fix (docs/benchmarks.md, learning quality)
    with pytest.raises(ConfigError, match="trainer.lr_scheduler='cosine_with_restarts': use one of constant, "
                                          "linear, cosine"):
        TrainerConfig(lr_scheduler="cosine_with_restarts")
    with pytest.raises(ConfigError, match=r"trainer.warmup_steps=-1: must be >= 0"):
        TrainerConfig(warmup_steps=-1)
