"""The rollout-engine interface that every generation backend implements.

An engine turns prompt token ids into sampled responses and keeps the sampled tokens' logprobs
(the behaviour policy μ, at the sampling temperature), and it accepts new weights from the trainer.
`rollout/hf_engine.py` (transformers; CPU or GPU) and `rollout/vllm.py` (GPU clusters) implement it;
`rollout/worker.py` wraps either in a Ray actor. Callers never special-case an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

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
