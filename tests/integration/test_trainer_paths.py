"""The trainer's loss paths agree: fused (hidden states → loss, no logits) == naive (materialised logits).

Two single-rank TrainerWorker actors start from the same tiny model, take one identical train step,
one through `trainer.fused_loss=true` and one through `false`; the loss and the updated weights
(seen through the probe logprobs) must agree. Also covers a step with two mini-batches (old
logprobs recomputed) and one with a KL term to the reference model.
"""

from __future__ import annotations


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


def _trainers(model_dir, *overrides, world: int = 1) -> list:
    cfg = load_config("configs/debug_cpu.yaml", [f"trainer.num_workers={world}", "trainer.zero_stage=0", *overrides])
    actors = [ray.remote(TrainerWorker).options(num_cpus=0).remote(
        rank, world, model_path=model_dir, trainer=cfg.trainer, model=cfg.model,
        loss=cfg.algorithm.trainer_loss(), temperature=0.8, need_ref=cfg.algorithm.needs_reference,
        threads=1, seed=0) for rank in range(world)]
    addr, port = ray.get(actors[0].rendezvous_address.remote())
    ray.get([a.setup.remote(addr, port) for a in actors])
    return actors


def _trainer(model_dir, *overrides):
    return _trainers(model_dir, *overrides)[0]


@pytest.mark.parametrize("extra", [[], ["trainer.mini_batches=2"], ["algorithm.loss.kl_coef=0.1", "algorithm.loss.clip_ratio_c=3.0"],
                                   ["model.dtype=bfloat16"]],
                         ids=["one-update", "two-mini-batches", "kl-dual-clip", "bf16-autocast"])
def test_fused_and_naive_paths_agree(ray_cluster, tiny_model_dir, extra):
    fused = _trainer(tiny_model_dir, "trainer.fused_loss=true", *extra)
    naive = _trainer(tiny_model_dir, "trainer.fused_loss=false", *extra)
    samples = _samples()
    probe = ([s.prompt_ids for s in samples[:3]], [s.response_ids for s in samples[:3]])
    initial = ray.get(fused.probe_logprobs.remote(*probe))
    mb = 2 if "trainer.mini_batches=2" in extra else 1
    a, b = ray.get([fused.train_step.remote(samples, mb, 1), naive.train_step.remote(samples, mb, 1)])
    for ra, rb in zip(a.records, b.records):
        assert ra["loss/policy"] == pytest.approx(rb["loss/policy"], rel=1e-4, abs=1e-6)
        assert ra["loss/kl"] == pytest.approx(rb["loss/kl"], rel=1e-4, abs=1e-6)
    pa, pb = ray.get([fused.probe_logprobs.remote(*probe), naive.probe_logprobs.remote(*probe)])
    for x, y in zip(pa, pb):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-4)
    assert not torch.allclose(torch.tensor(sum(pa, [])), torch.tensor(sum(initial, [])), atol=1e-4)  # it learned
    ray.kill(fused), ray.kill(naive)


def test_two_ranks_with_unequal_micro_batch_counts(ray_cluster, tiny_model_dir):
    """Rank 0's shard of each mini-batch packs into fewer micro-batches than rank 1's (short responses and a
    zero advantage on rank 0), so rank 0 runs padding passes in the proximal-logprob pass and in the updates.
    Nothing may be read back from a padding pass: every trained sample keeps its own old logprobs, and the
    KL-in-reward pass gives every sample its own penalty."""
    samples = _samples()
    for i, s in enumerate(samples):  # mini-batch m holds rows 4m..4m+3; rank r takes rows r and r+2 of it
        n = 2 if i % 2 == 0 else 9  # rank 0: two short rows (one micro-batch); rank 1: two long (two)
        s.response_ids, s.rollout_logprobs = s.response_ids[:1] * n, [-1.0] * n
        s.advantage = 1.0 if i % 3 else -1.0
    samples[2].advantage = 0.0  # skipped on rank 0, counted in the token totals
    ranks = _trainers(tiny_model_dir, "trainer.micro_batch_tokens=16", "algorithm.kl_in_reward.enable=true",
                      "trainer.lr=1e-2", world=2)
    results = ray.get([r.train_step.remote(samples, 2, 1) for r in ranks])
    assert [res.updates for res in results] == [2, 2]
    assert [res.skipped for res in results] == [1, 0]  # each rank counts its own shard only
    counts = [res.parity["parity/count"] for res in results]
    assert counts == [sum(len(samples[i].response_ids) for i in (0, 4, 6)), 4 * 9]  # every trained token, once
    # after the update the policy differs from the reference: each sample's KL is its own, none read as 0
    kl = {i: v for part in ray.get([r.sequence_kl.remote(samples, "k2") for r in ranks]) for i, v in part.items()}
    assert sorted(kl) == list(range(8)) and all(v > 0 for v in kl.values()), kl
    for r in ranks:
        ray.kill(r)


def test_shared_prompt_rows_train_like_separate_sequences(ray_cluster, tiny_model_dir):
    """trainer.share_prompts=true (each prompt once per micro-batch, block mask) and =false (one sequence
    per row) take the same two-mini-batch step over two ranks and must agree on every loss and parity
    sum. lr=0 keeps the weights fixed, so the second mini-batch's ratios compare the proximal
    logprobs read back from the first pass (by sample, in each layout's own order) with the current ones:
    a sample given another's old logprobs would move its loss. Error model: both layouts add the same fp32
    products in a different order, fp32 noise far under rel 1e-4 (an Adam step would amplify that noise to
    ±lr on near-zero gradients, hence lr=0; tests/unit/test_shared_prompts.py compares gradients directly)."""
    samples = _samples()
    for s in samples:  # two groups of four answers, one prompt each
        s.prompt_ids = [4, 20 + s.group_id, 21, 22]
    runs = {}
    for share in ("true", "false"):
        ranks = _trainers(tiny_model_dir, f"trainer.share_prompts={share}", "trainer.micro_batch_tokens=24",
                          "trainer.lr=0", world=2)
        results = ray.get([r.train_step.remote(samples, 2, 1) for r in ranks])
        runs[share] = ([rec["loss/policy"] for res in results for rec in res.records],
                       [res.parity["parity/abs_sum"] for res in results])
        for r in ranks:
            ray.kill(r)
    for a, b in zip(runs["true"], runs["false"]):
        assert len(a) == len(b) > 0 and a == pytest.approx(b, rel=1e-4, abs=1e-7)
