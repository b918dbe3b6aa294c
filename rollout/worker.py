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
                 cores: list[int] | None = None, guard: GuardSpec | None = None, tools: dict | None = None):
        self.guard = Guard(guard)
        use_cpus(threads, cores)
        self.tool_settings, self.tool_runner = _tool_runner(tools) if tools else (None, None)
        self.engine = make_engine(engine, model_path, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self.version = 0

    @guarded
    def generate(self, requests: list[PromptRequest], params: SamplingParams) -> list[Sample]:
        """`params.n` samples per request, in the engine's output order; multi-turn trajectories with tools."""
        prompts = [r.prompt_ids for r in requests]
        if self.tool_runner is not None:
            from rollout.multiturn import generate_multiturn

            outputs = [(t.prompt_index, t.response_ids, t.logprobs, t.finish_reason,
                        t.mask if t.has_tool_tokens else None, t.calls, t.turns)
                       for t in generate_multiturn(self.engine, prompts, params, self.tool_settings, self.tool_runner)]
        else:
            outputs = [(o.prompt_index, o.response_ids, o.logprobs, o.finish_reason, None, None, 1)
                       for o in self.engine.generate(prompts, params)]
        release_free_memory()  # the decode's KV caches, freed: back to the OS (rl/memory.py)
        texts = self.tokenizer.batch_decode([o[1] for o in outputs], skip_special_tokens=True)
        samples = []
        for (index, ids, logprobs, reason, mask, calls, turns), text in zip(outputs, texts):
            req = requests[index]
            samples.append(Sample(
                prompt_id=req.prompt_id, group_id=req.group_id, prompt_ids=req.prompt_ids,
                response_ids=ids, rollout_logprobs=logprobs, finish_reason=reason,
                policy_version=self.version, prompt_text=req.prompt_text, response_text=text,
                fields=req.fields, response_mask=mask, tool_calls=calls, turns=turns,
            ))
        return samples

    def tool_counts(self) -> dict[str, int]:
        """Tool calls run by this worker so far, by outcome (calls, ok, error, timeout); {} without tools."""
        return dict(self.tool_runner.counts) if self.tool_runner is not None else {}

    def close_tools(self) -> None:
        if self.tool_runner is not None:
            self.tool_runner.close()

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


def _tool_runner(cfg: dict):
    """(ToolSettings, ToolRunner) from the rollout worker's `tools` settings (launch/cluster.py `tool_settings`):
    the tools resolved in this process and their sandboxed workers started before the model loads."""
    from rollout.multiturn import ToolSettings
    from rollout.tool_runner import ToolRunner
    from rollout.tools import resolve_tools

    tools = resolve_tools(cfg["specs"])
    settings = ToolSettings(tools, fmt=cfg["format"], max_turns=cfg["max_turns"],
                            response_template=cfg.get("response_template"))
    runner = ToolRunner(tools, timeout_s=cfg["timeout_s"], num_workers=cfg["workers"], sandbox=cfg["sandbox"],
                        cgroup=cfg.get("cgroup", "auto"))
    return settings, runner
