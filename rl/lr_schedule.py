"""The learning-rate schedule (`trainer.lr_scheduler`, `trainer.warmup_steps`), counted in optimizer updates.

A run plans N = trainer.total_steps × trainer.mini_batches × trainer.epochs updates: a step runs one update
per non-empty mini-batch per epoch. A step with fewer samples than `mini_batches` runs fewer (empty mini-batches
are skipped), and a run stopped early by `trainer.max_generated_tokens` runs fewer steps; the schedule stays
planned for the nominal N, so such a run ends above the lr its decay aims at.

The factors are transformers' (`get_scheduler`) over N + 1 updates with warm-up W = max(1, warmup_steps),
entered one update in: update k (0-based) runs at lr · factor(k + 1). That keeps the warm-up this trainer has
always had (the first update at lr/W rather than a wasted one at lr 0; full lr from update W - 1 on), and
without warm-up the decays are exactly transformers' (update k at lr · (N - k)/N, or lr · ½(1 + cos(πk/N))).
`linear` and `cosine` reach 0 just after the last planned update, so every planned update trains.
"""

from __future__ import annotations

import warnings

import torch

LR_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
"""`trainer.lr_scheduler` values and the transformers schedule each one is."""


def make_lr_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int,
                      total_updates: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The scheduler for `optimizer`, already set to the first update's lr; step it after every update."""
    from transformers import get_scheduler  # here, not at import: launch.config reads LR_SCHEDULERS

    scheduler = get_scheduler(LR_SCHEDULERS[name], optimizer, num_warmup_steps=max(1, warmup_steps),
                              num_training_steps=total_updates + 1)
    with warnings.catch_warnings():  # the one step before any update is the shift described above
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    return scheduler
