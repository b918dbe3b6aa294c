"""Rollout worker: a Ray actor that owns one generation engine (`hf` or `vllm`).

It turns prompt requests into `Sample`s (token ids as generated, the engine's logprobs, finish
reason, the policy version that produced them) and takes new weights from the trainer: the
object-store transport streams one bucket at a time into `engine.load_weights`; the GPU transports
(NCCL broadcast, CUDA IPC) are driven by trainer rank 0 through the methods at the end.
"""

from __future__ import annotations

import importlib
from typing import Any

import ray

from rl.cpu import use_cpus
from rl.faults import Guard, GuardSpec, guarded
from rl.memory import process_memory_mb, release_free_memory
from rl.types import PromptRequest, Sample
from rl.weight_sync import PublishedWeights
from rollout.engine import RolloutEngine, SamplingParams

ENGINES = {"hf": "rollout.hf_engine:HFEngine", "vllm": "rollout.vllm:VLLMEngine"}


def make_engine(name: str, model_path: str, **kwargs: Any) -> RolloutEngine:
    if name not in ENGINES:
        raise ValueError(f"rollout.engine={name!r}: known engines are {sorted(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(model_path, **kwargs)


class RolloutWorker:
    def __init__(self, engine: str, model_path: str, *, engine_kwargs: dict, threads: int = 0,
                 cores: list[int] | None = None, guard: GuardSpec | None = None):
        self.guard = Guard(guard)
        use_cpus(threads, cores)
        self.engine = make_engine(engine, model_path, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self.version = 0

    @guarded
    def generate(self, requests: list[PromptRequest], params: SamplingParams) -> list[Sample]:
        """`params.n` samples per request, in the engine's output order."""
        outputs = self.engine.generate([r.prompt_ids for r in requests], params)
        release_free_memory()  # the decode's KV caches, freed: back to the OS (rl/memory.py)
        texts = self.tokenizer.batch_decode([o.response_ids for o in outputs], skip_special_tokens=True)
        samples = []
        for out, text in zip(outputs, texts):
            req = requests[out.prompt_index]
            samples.append(Sample(
                prompt_id=req.prompt_id, group_id=req.group_id, prompt_ids=req.prompt_ids,
                response_ids=out.response_ids, rollout_logprobs=out.logprobs, finish_reason=out.finish_reason,
                policy_version=self.version, prompt_text=req.prompt_text, response_text=text,
                fields=req.fields,
            ))
        return samples

    @guarded
    def update_weights(self, published: PublishedWeights, version: int) -> int:
        """Object store: load the buckets; a GPU transport has already loaded them (no buckets)."""
        for ref in published.buckets:  # one bucket in memory at a time
            self.engine.load_weights(ray.get(ref))
        self.engine.finish_weight_update()
        self.version = version
        return version

    # -- GPU weight transports, driven by trainer rank 0 (rl/weight_sync.py; vLLM engines) ------
    def sleep(self) -> None:
        """Colocated placement: free this worker's GPU memory for training (no-op without sleep mode)."""
        self.engine.sleep()

    def tensor_parallel_size(self) -> int:
        return self.engine.tensor_parallel_size

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        self.engine.init_weight_group(host, port, rank_offset, world_size)

    def receive_broadcast(self, plan_wire: list[dict]) -> None:
        self.engine.receive_broadcast(plan_wire)

    def load_ipc_bucket(self, bucket_wire: dict, handles: dict[str, bytes]) -> None:
        self.engine.load_ipc_bucket(bucket_wire, handles)

    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[list[float]]:
        return self.engine.score(prompts, responses, temperature)

    def ping(self) -> int:
        return self.version

    def describe_precision(self) -> str:
        """The engine's compute format (rl.precision for the HF engine; vLLM names its own dtype)."""
        p = vars(self.engine).get("precision")  # not part of the engine protocol: reported when present
        return p.name if p is not None else str(vars(self.engine).get("dtype", "the engine's default"))

    def memory(self) -> dict[str, float]:
        """This worker's resident memory now and at its peak (MiB; rl.memory.process_memory_mb)."""
        return process_memory_mb()
