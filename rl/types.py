"""The records that cross process boundaries: prompt requests, generated samples, trainer results.

The driver sends `PromptRequest`s to the rollout workers; they create `Sample`s (token ids, the
engine's per-token logprobs, finish reason, policy version); reward workers fill in `reward`,
`reward_metrics`, `reward_status` and `stratum`; the driver computes advantages and hands samples to
the trainer, which pads them into a `TrainBatch` in exactly one place (`rl.batch.collate`). Each
trainer rank returns a `TrainResult`; `rl.steps.train_metrics` combines the ranks' into step metrics.

Plain dataclasses of Python lists so that they pickle cheaply through Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]
RewardStatus = Literal["ok", "error", "timeout"]


@dataclass(frozen=True)
class PromptRequest:
    """One prompt to generate `SamplingParams.n` answers for (driver → rollout worker): a row of the dataset
    as launch.prepare rendered it, and the group id its answers share (fresh per prompt per round; -1 in eval)."""

    prompt_id: int
    group_id: int
    prompt_ids: list[int]
    prompt_text: str
    fields: dict[str, Any]
    """The dataset row (answer, data_source, ...), copied into every sample."""


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
    response_mask: list[bool] | None = None
    """The loss mask, one flag per response token: True for a token the policy sampled (it trains, and its
    rollout logprob is the behaviour policy's), False for one it did not (a tool's output appended in a
    multi-turn rollout: context for the later tokens, never a loss term, never counted in the token-mean; its
    rollout logprob is a placeholder). None: every response token was sampled."""
    tool_calls: list[dict[str, Any]] | None = None
    """A multi-turn rollout's tool calls, in order (rollout/multiturn.py `Trajectory.calls`: turn, name,
    arguments, observation, status, the observation's token span); None for a single-turn rollout."""
    turns: int = 1
    """Model turns in the trajectory (1 for a single-turn rollout)."""

    def __post_init__(self) -> None:
        if len(self.rollout_logprobs) != len(self.response_ids):
            raise ValueError(
                f"Sample(prompt_id={self.prompt_id}): {len(self.rollout_logprobs)} rollout logprobs for "
                f"{len(self.response_ids)} response tokens; the engine must return one logprob per token"
            )
        if self.response_mask is not None and len(self.response_mask) != len(self.response_ids):
            raise ValueError(f"Sample(prompt_id={self.prompt_id}): a response_mask of {len(self.response_mask)} "
                             f"flags for {len(self.response_ids)} response tokens; it needs one per token")

    def trained_positions(self) -> list[int]:
        """Indices of the response tokens that carry a loss term (all of them without a response_mask)."""
        if self.response_mask is None:
            return list(range(len(self.response_ids)))
        return [k for k, m in enumerate(self.response_mask) if m]

    @property
    def num_trained_tokens(self) -> int:
        """Response tokens the policy sampled: what the token-mean counts."""
        return len(self.response_ids) if self.response_mask is None else sum(map(bool, self.response_mask))

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def response_length(self) -> int:
        return len(self.response_ids)


@dataclass(frozen=True)
class TrainResult:
    """One trainer rank's account of a step (`TrainerWorker.train_step`): the metrics of each micro-batch that
    held tokens, the optimizer steps taken and the lr after them, each update's global pre-clip grad norm (the
    same on every rank), this rank's samples skipped for a zero advantage, its logprob-gap sums
    (rl.policy.parity_sums), the seconds it spent in each phase (`timing`: old_logprobs, ref_logprobs,
    forward, backward, optimizer) and its memory after the step (rl.memory.process_memory_mb)."""

    records: list[dict[str, float]]
    updates: int
    lr: float
    grad_norms: list[float]
    skipped: int
    parity: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
