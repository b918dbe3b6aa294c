"""DP-shard invariance of the exact global token-mean loss with two real gloo ranks.

Each rank holds a different shard of one mini-batch (unequal token counts, an empty response), splits it
into micro-batches, all-reduces the valid-token count FIRST, accumulates `policy_loss(logprobs,
LossInputs(..., global_num_tokens=N), cfg)` gradients, then all-reduces the gradients with SUM (the convention
documented in rl/losses.py). The summed gradient must equal the gradient of the single-process full batch — and a
naive average of per-rank token means must not (the test would catch a silent regression to it).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rl.loss_config import LossConfig, LossInputs
from rl.losses import policy_loss, token_loss_terms

WORLD = 2
SHARDS = [[0, 1, 2], [3, 4, 5, 6, 7]]  # rank 0: 3 rows, rank 1: 5 rows (different token counts)
# micro-batches per rank (rows of the full batch), under two token budgets
MICRO = {"small": {0: [[0], [1, 2]], 1: [[3, 4], [5, 6, 7]]}, "large": {0: [[0, 1, 2]], 1: [[3], [4, 5, 6, 7]]}}
MODES = {"token-mean": {}, "seq-mean-token-mean": {}, "seq-mean-token-sum-norm": {"loss_scale_factor": 6.0}}


def make_batch():
    """A linear softmax policy over V tokens and a fixed mini-batch of 8 responses (float64)."""
    g = torch.Generator().manual_seed(123)
    B, T, H, V = 8, 6, 5, 11
    x = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([6, 1, 4, 0, 2, 6, 3, 5])
    mask = (torch.arange(T)[None] < lengths[:, None]).double()  # (B, T)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    w0 = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    with torch.no_grad():
        old = _logprobs(w0, x, y) + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    return x, y, mask, adv, old, w0


def _logprobs(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(x @ w.T, -1).gather(-1, y[..., None])[..., 0]  # (b, T)


def _loss(w, rows, mode, n_tok, n_seq):
    x, y, mask, adv, old, _ = make_batch()
    r = torch.tensor(rows)
    cfg = LossConfig(loss_agg_mode=mode, clip_ratio_c=3.0, **MODES[mode])
    inputs = LossInputs(old[r], adv[r], mask[r], global_num_tokens=n_tok, global_num_seqs=n_seq)
    loss, _ = policy_loss(_logprobs(w, x[r], y[r]), inputs, cfg)
    return loss


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # a spawned child process of its own: nothing leaks into the test process
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        _, _, mask, _, _, w0 = make_batch()
        local = torch.tensor(SHARDS[rank])
        for (mode, budget) in [(m, b) for m in MODES for b in MICRO]:
            # 1. all-reduce the counts of the whole mini-batch before any backward
            counts = torch.stack([mask[local].sum(), (mask[local].sum(-1) > 0).sum().double()])
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            n_tok, n_seq = counts[0], counts[1]
            # 2. micro-batch backward passes accumulate this rank's share
            w = torch.nn.Parameter(w0.clone())
            share = torch.zeros((), dtype=torch.float64)
            for rows in MICRO[budget][rank]:
                loss = _loss(w, rows, mode, n_tok, n_seq)
                loss.backward()
                share += loss.detach()
            # 3. SUM (not average) gradients and loss shares across ranks
            dist.all_reduce(w.grad, op=dist.ReduceOp.SUM)
            dist.all_reduce(share, op=dist.ReduceOp.SUM)
            # naive alternative for contrast: this rank's local mean, averaged over ranks
            naive = torch.nn.Parameter(w0.clone())
            _loss(naive, SHARDS[rank], mode, None, None).backward()
            dist.all_reduce(naive.grad, op=dist.ReduceOp.SUM)
            torch.save({"grad": w.grad, "loss": share, "naive_grad": naive.grad / WORLD},
                       Path(out_dir) / f"{mode}_{budget}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_exact_token_mean_is_dp_shard_invariant(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    _, _, mask, _, _, w0 = make_batch()
    everything = list(range(8))
    for mode, budget in [(m, b) for m in MODES for b in MICRO]:
        w = torch.nn.Parameter(w0.clone())
        full = _loss(w, everything, mode, None, None)  # single process, full batch, local counts
        full.backward()
        if mode == "seq-mean-token-sum-norm":  # Dr. GRPO written out: (1/N_seq) Σ_i Σ_t L_it / S
            x, y, _, adv, old, _ = make_batch()
            terms, _ = token_loss_terms(_logprobs(w0, x, y), old, adv[:, None].expand_as(old),
                                        LossConfig(clip_ratio_c=3.0))
            n_seq = int((mask.sum(-1) > 0).sum())
            torch.testing.assert_close(full.detach(), (terms * mask).sum() / (n_seq * 6.0), atol=1e-12, rtol=1e-10)
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"{mode}_{budget}_rank{rank}.pt")
            torch.testing.assert_close(got["grad"], w.grad, atol=1e-12, rtol=1e-10)
            torch.testing.assert_close(got["loss"], full.detach(), atol=1e-12, rtol=1e-10)
            # unequal shards: the mean of per-rank means is a different (wrong) objective
            assert (got["naive_grad"] - w.grad).abs().max() > 1e-4, mode
