"""Weight sync, trainer side: gather full parameters (ZeRO-3 aware) and cut them into buckets.

This is the one place that knows how trainer weights become rollout weights. Every trainer rank
calls `gather_buckets` collectively (under ZeRO-3 each parameter is all-gathered, so all ranks must
take part); rank 0 keeps CPU copies and hands the buckets to a transport. Transports:
- object store (any setup; default on CPU): `rl/trainer.py` puts each bucket in Ray's object store
  and `rollout/worker.py` streams them into the engine with `load_weights`;
- NCCL broadcast and in-place colocated loading: GPU transports (issue 7).
Buckets bound peak memory to one bucket of gathered ZeRO-3 parameters at a time.
"""

from __future__ import annotations

from typing import Iterator

import torch

Bucket = list[tuple[str, torch.Tensor]]


def _gathered(params: list[torch.nn.Parameter], zero_stage: int):
    if zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    import contextlib

    return contextlib.nullcontext()


def gather_buckets(module: torch.nn.Module, *, zero_stage: int, bucket_bytes: int = 256 << 20,
                   keep: bool = True, dtype: torch.dtype | None = None) -> Iterator[Bucket]:
    """Yield buckets of (name, full CPU tensor); collective under ZeRO-3 (call on every rank).

    `keep=False` (ranks other than 0) still joins the gathers but copies nothing. Tied weights
    appear once, under their first name, as `named_parameters` reports them.
    """
    named = list(module.named_parameters())
    start = 0
    while start < len(named):
        end, size = start, 0
        while end < len(named) and (end == start or size + _numel(named[end][1]) * 4 <= bucket_bytes):
            size += _numel(named[end][1]) * 4
            end += 1
        chunk = named[start:end]
        with _gathered([p for _, p in chunk], zero_stage):
            bucket = [(n, p.detach().to("cpu", dtype or p.dtype, copy=True)) for n, p in chunk] if keep else []
        yield bucket
        start = end


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions report their full size here


def full_state_dict(module: torch.nn.Module, *, zero_stage: int, keep: bool = True) -> dict[str, torch.Tensor]:
    """The whole model as one CPU state dict (for `final/` and checkpoints' HF export)."""
    out: dict[str, torch.Tensor] = {}
    for bucket in gather_buckets(module, zero_stage=zero_stage, keep=keep):
        out.update(bucket)
    return out
