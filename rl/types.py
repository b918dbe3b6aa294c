"""The one record that crosses process boundaries: a generated sample.

Rollout workers create `Sample`s (token ids, the engine's per-token logprobs, finish reason,
policy version); reward workers fill in `reward`, `reward_metrics`, `reward_status` and `stratum`;
the driver computes advantages and hands samples to the trainer, which pads them into a
`TrainBatch` in exactly one place (`rl.batch.collate`).

Plain dataclasses of Python lists so that they pickle cheaply through Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]
RewardStatus = Literal["ok", "error", "timeout"]


@dataclass
class Sample:
    prompt_id: int
    """Index of the prompt in its dataset (stable across epochs)."""
    group_id: int
    """Samples of one prompt drawn in one generation round share a group id (GRPO group)."""
    prompt_ids: list[int]
    """Token ids of the rendered prompt, exactly as fed to the engine."""
    response_ids: list[int]
    """Token ids as generated (no re-tokenisation), including the EOS/stop token if emitted."""
    rollout_logprobs: list[float]
    """Behaviour-policy logprob of each response token at the sampling temperature (len == len(response_ids))."""
    finish_reason: FinishReason
    """"stop" (EOS or stop string) or "length" (hit max_new_tokens: truncated)."""
    policy_version: int
    """Version of the weights that generated this sample (0 = initial weights)."""
    prompt_text: str = ""
    response_text: str = ""
    reward: float | None = None
    reward_metrics: dict[str, float] = field(default_factory=dict)
    reward_status: RewardStatus = "ok"
    stratum: str | None = None
    advantage: float | None = None
    replayed: bool = False
    """Drawn from the replay buffer (rl/replay.py): the trainer weights its tokens by min(π_old/π_rollout, C)."""
    is_weight: float = 1.0
    """Detached weight on every token of this sample's loss: the PER correction of a replayed sample, else 1."""
    fields: dict[str, Any] = field(default_factory=dict)
    """The dataset row (answer, data_source, ...) passed to reward functions by column name."""

    def __post_init__(self) -> None:
        if len(self.rollout_logprobs) != len(self.response_ids):
            raise ValueError(
                f"Sample(prompt_id={self.prompt_id}): {len(self.rollout_logprobs)} rollout logprobs for "
                f"{len(self.response_ids)} response tokens; the engine must return one logprob per token"
            )

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def response_length(self) -> int:
        return len(self.response_ids)
