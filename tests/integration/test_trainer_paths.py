"""The trainer's loss paths agree: fused (hidden states → loss, no logits) == naive (materialised logits).

Two single-rank TrainerWorker actors start from the same tiny model, take one identical train step,
one through `trainer.fused_loss=true` and one through `false`; the loss and the updated weights
(seen through the probe logprobs) must agree. Also covers a step with two mini-batches (old
logprobs recomputed) and one with a KL term to the reference model.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import ray
import torch

from launch.config import load_config
from rl.trainer import TrainerWorker
from rl.types import Sample

pytestmark = pytest.mark.slow


def _samples(seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(8):
        n = 3 + i % 4
        out.append(Sample(i, i // 4, [4, 20 + i, 21, 22], torch.randint(10, 80, (n,), generator=g).tolist(),
                          (-torch.rand(n, generator=g) * 4).tolist(), "stop", 0, advantage=float(i % 3) - 1.0))
    return out


def _trainer(model_dir, *overrides):
    cfg = load_config("configs/debug_cpu.yaml", ["trainer.num_workers=1", "trainer.zero_stage=0", *overrides])
    actor = ray.remote(TrainerWorker).options(num_cpus=0).remote(
        0, 1, model_path=model_dir, trainer_cfg=asdict(cfg.trainer), model_cfg=asdict(cfg.model),
        loss_params=cfg.algorithm.loss_params(), temperature=0.8, need_ref=cfg.algorithm.needs_reference,
        threads=1, seed=0)
    addr, port = ray.get(actor.rendezvous_address.remote())
    ray.get(actor.setup.remote(addr, port))
    return actor


@pytest.mark.parametrize("extra", [[], ["trainer.mini_batches=2"], ["algorithm.loss.kl_coef=0.1", "algorithm.loss.clip_ratio_c=3.0"]],
                         ids=["one-update", "two-mini-batches", "kl-dual-clip"])
def test_fused_and_naive_paths_agree(ray_cluster, tiny_model_dir, extra):
    fused = _trainer(tiny_model_dir, "trainer.fused_loss=true", *extra)
    naive = _trainer(tiny_model_dir, "trainer.fused_loss=false", *extra)
    samples = _samples()
    probe = ([s.prompt_ids for s in samples[:3]], [s.response_ids for s in samples[:3]])
    initial = ray.get(fused.probe_logprobs.remote(*probe))
    mb = 2 if "trainer.mini_batches=2" in extra else 1
    a, b = ray.get([fused.train_step.remote(samples, mb, 1), naive.train_step.remote(samples, mb, 1)])
    for ra, rb in zip(a["records"], b["records"]):
        assert ra["loss/policy"] == pytest.approx(rb["loss/policy"], rel=1e-4, abs=1e-6)
        assert ra["loss/kl"] == pytest.approx(rb["loss/kl"], rel=1e-4, abs=1e-6)
    pa, pb = ray.get([fused.probe_logprobs.remote(*probe), naive.probe_logprobs.remote(*probe)])
    for x, y in zip(pa, pb):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-4)
    assert not torch.allclose(torch.tensor(sum(pa, [])), torch.tensor(sum(initial, [])), atol=1e-4)  # it learned
    ray.kill(fused), ray.kill(naive)
