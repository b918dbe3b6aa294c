"""The rollout-engine interface that every generation backend implements.

An engine turns prompt token ids into sampled responses and keeps the sampled tokens' logprobs
(the behaviour policy μ, at the sampling temperature), and it accepts new weights from the trainer.
`rollout/hf_engine.py` (transformers; CPU or GPU) and `rollout/vllm.py` (GPU clusters) implement it;
`rollout/worker.py` wraps either in a Ray actor and uses nothing of an engine but `RolloutEngine`
(tests/unit/test_engine_protocol.py checks that), so callers never special-case an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch


@dataclass
class SamplingParams:
    n: int = 1
    """Samples per prompt."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    greedy: bool = False
    """Greedy decoding (eval); logprobs are then those of the argmax tokens at temperature 1."""
    seed: int | None = None


@dataclass
class GenerationOutput:
    prompt_index: int
    """Index of the prompt in the request."""
    response_ids: list[int]
    """Token ids as generated, including the EOS/stop token when one ended the response."""
    logprobs: list[float]
    """log μ(token) of each response token at the sampling temperature."""
    finish_reason: str
    """"stop" or "length"."""


class RolloutEngine(Protocol):
    tokenizer: Any
    """The model's Hugging Face tokenizer: the worker decodes response texts with it."""
    tensor_parallel_size: int
    """GPUs (vLLM workers) this engine spans: each takes one rank in the NCCL weight group; 1 for HF."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        """Sample `params.n` responses for every prompt; outputs are ordered prompt-major."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace (some of) the model's parameters in place; names as in the HF state dict."""
        ...

    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[list[float]]:
        """Logprob of each response token under the current weights (the post-sync parity probe)."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory while the trainer runs (colocated placement); a no-op where unsupported."""
        ...

    def finish_weight_update(self) -> None:
        """After a weight update: wake up if asleep and drop caches computed with the old weights."""
        ...

    # GPU weight transports (rl/weight_sync.py), driven by trainer rank 0; an engine without them raises
    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        """NCCL: join the trainer↔engine group at ranks rank_offset … rank_offset + tensor_parallel_size − 1."""
        ...

    def receive_broadcast(self, plan_wire: list[dict[str, Any]]) -> None:
        """NCCL: receive and load every bucket of the plan (`rl.weight_sync.plan_to_wire`) that rank 0 sends."""
        ...

    def load_ipc_bucket(self, bucket_wire: dict[str, Any], handles: dict[str, bytes]) -> None:
        """CUDA IPC: load one bucket from the trainer rank sharing each GPU (`rl.weight_sync.ipc_handle`)."""
        ...
