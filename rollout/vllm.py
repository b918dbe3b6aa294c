"""vLLM rollout engine (GPU clusters): the RolloutEngine interface over `vllm.LLM`, pinned to vLLM 0.26.0.

`rollout.engine=vllm` selects it (rollout/worker.py's ENGINES); nothing else in a recipe changes.
One engine owns one `vllm.LLM` with tensor parallelism over `tensor_parallel_size` GPUs. It samples
n answers per prompt and returns the token ids exactly as generated (EOS / stop token included, no
re-tokenisation) with each sampled token's logprob at the sampling temperature. Weights arrive by
three transports (rl/weight_sync.py owns them; `WeightSyncExtension` below is their vLLM end):
`load_weights` (object store), `receive_broadcast` (NCCL, split placement) and `load_ipc_bucket`
(CUDA IPC, colocated placement, between `sleep()` and `finish_weight_update()`). The prefix cache is
reset after every update. vLLM has no CPU build: this module is imported only on GPU nodes.

vLLM 0.26.0 API relied on (read from the 0.26.0 wheel's sources; paths inside the `vllm` package):
- entrypoints/llm.py `LLM(model, *, tokenizer, trust_remote_code, tensor_parallel_size, dtype, seed,
  gpu_memory_utilization, enforce_eager, **EngineArgs)`; `generate(prompts, sampling_params (one or
  one per prompt), use_tqdm=...) -> list[RequestOutput]` in prompt order; `collective_rpc(method,
  timeout=None, args=(), kwargs=None) -> list` (one result per worker); `reset_prefix_cache()`;
  `sleep(level=1, mode="abort")` (level 2 discards weights and KV cache, for weights that are about
  to be replaced); `wake_up(tags=None)` with tags from ("weights", "kv_cache", "scheduling"),
  scheduling resumes once every tag is awake (v1/engine/core.py `wake_up`).
- engine/arg_utils.py EngineArgs fields used: enable_sleep_mode, load_format ("dummy": random
  weights, model_executor/model_loader/dummy_loader.py), distributed_executor_backend, max_model_len,
  max_num_seqs, enable_prefix_caching, worker_extension_cls, logprobs_mode, max_logprobs.
- config/model.py `logprobs_mode`: "processed_logprobs" = log-softmax after temperature and top-k/
  top-p (v1/sample/sampler.py `sample`, v1/sample/ops/topk_topp_sampler.py `forward_native`); all-greedy
  batches get log_softmax of the raw logits (temperature 1). The V2 model runner, the default for dense
  models (config/vllm.py `use_v2_model_runner`), does the same (v1/worker/gpu/sample/sampler.py:
  temperature, then top-k/top-p, then log-softmax; temperature 0 or 1 is skipped). With top_p < 1
  the recorded logprob is therefore that of the truncated, renormalised distribution sampled from.
  Prompt logprobs are never processed (the same docstring): `score` rescales them itself.
  `max_logprobs=-1` lifts the 20-logprob cap so `score` may ask for the full vocabulary.
- sampling_params.py `SamplingParams(n, temperature (0 = greedy), top_p, max_tokens, repetition_penalty,
  presence_penalty, frequency_penalty, min_p, stop, seed, logprobs, prompt_logprobs (-1 = whole
  vocabulary), flat_logprobs, detokenize)`; with n > 1 and a seed, child j samples with seed + j
  (v1/engine/parallel_sampling.py). Temperatures below 0.01 are treated as greedy and above 2 are
  refused: the config schema keeps rollout.temperature in [0.01, 2] for this engine.
- EngineArgs `generation_config="vllm"`: vLLM's neutral sampling defaults instead of the checkpoint's
  generation_config.json; `hf_overrides={"head_dtype": "float32"}`: the LM head and logprobs in fp32.
- outputs.py `RequestOutput.outputs: list[CompletionOutput]`, `.prompt_logprobs`;
  `CompletionOutput(index, token_ids, logprobs, finish_reason ("stop"|"length"|"abort"|...,
  v1/engine/__init__.py FinishReason), stop_reason)`; token_ids keep the EOS / stop-string token
  (v1/engine/detokenizer.py `update`). logprobs.py `FlatLogprobs(start_indices, end_indices,
  token_ids, logprobs)`: position i spans [start_indices[i], end_indices[i]), the sampled (or prompt)
  token first, then the top-k by rank.
- v1/worker/worker_base.py: `worker_extension_cls` (a dotted path) is appended to the worker class's
  bases; its methods are callable through `collective_rpc` and must not clash with Worker's names.
  v1/worker/gpu_worker.py Worker: `self.rank`, `self.device`, `get_model()` (the unwrapped nn.Module);
  the model's `load_weights(weights: Iterable[(hf_name, tensor)])` shards and copies in place
  (model_executor/models/llama.py, qwen2.py).
- Placement: a TP=1 engine runs in-process ("uni") on the actor's GPU. For TP > 1, "ray" selects
  v1/executor/ray_executor_v2.py (VLLM_USE_RAY_V2_EXECUTOR_BACKEND=1 by default), which puts one
  worker actor per bundle of the placement group the calling actor runs in (engine/arg_utils.py passes
  it to the engine process), on the bundles listed in VLLM_RAY_BUNDLE_INDICES, each asking for
  VLLM_RAY_PER_WORKER_GPUS GPUs (envs.py); bundles may hold at most one GPU (v1/executor/ray_utils.py).
- v1/serial_utils.py: collective_rpc arguments cross into the engine process as msgpack; anything
  but plain data and tensors needs VLLM_ALLOW_INSECURE_SERIALIZATION, so CUDA IPC handles and
  object-store buckets travel as bytes.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any, Iterable

import torch

from rl.weight_sync import (Deadline, broadcast_bucket, bucket_from_wire, nccl_group, open_ipc, plan_from_wire,
                            unpack_bucket, with_deadline)
from rollout.engine import GenerationOutput, SamplingParams

EXTENSION = "rollout.vllm.WeightSyncExtension"


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: str = "auto", batch_size: int = 256, trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 seed: int = 0, enable_sleep_mode: bool = False, sleep_level: int = 2,
                 enable_prefix_caching: bool = True, load_format: str = "auto", enforce_eager: bool = False,
                 bundle_indices: list[int] | None = None, gpu_share: float = 1.0, sync_timeout_s: float = 600.0):
        from transformers import AutoTokenizer
        from vllm import LLM

        backend = None  # vLLM's choice: in-process for TP=1 (the actor holds the GPU)
        if tensor_parallel_size > 1 and bundle_indices is not None:
            if len(bundle_indices) != tensor_parallel_size:
                raise ValueError(f"vLLM engine: {len(bundle_indices)} bundles for "
                                 f"tensor_parallel_size={tensor_parallel_size}")
            # read by the engine process this actor spawns (it inherits the environment)
            os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(str(b) for b in bundle_indices)
            os.environ["VLLM_RAY_PER_WORKER_GPUS"] = str(gpu_share)
            backend = "ray"
        self.tensor_parallel_size = tensor_parallel_size
        self.sleep_mode, self.sleep_level = enable_sleep_mode, sleep_level
        self.sync_timeout_s = sync_timeout_s
        self._asleep: set[str] = set()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.llm = LLM(
            model=model_path, tokenizer=model_path, trust_remote_code=trust_remote_code,
            # "auto" would turn a float32 checkpoint into float16; the trainer uses bfloat16 on GPU
            dtype="bfloat16" if dtype == "auto" else dtype,
            tensor_parallel_size=tensor_parallel_size, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, max_num_seqs=batch_size, enable_sleep_mode=enable_sleep_mode,
            enable_prefix_caching=enable_prefix_caching, load_format=load_format, enforce_eager=enforce_eager,
            distributed_executor_backend=backend, worker_extension_cls=EXTENSION,
            logprobs_mode="processed_logprobs", max_logprobs=-1,
            # sampling defaults from the checkpoint's generation_config.json (repetition_penalty, top_k, min_p,
            # ...) must never act unasked: the recorded logprobs are those of exactly our sampling settings
            generation_config="vllm",
            # the LM head and its logprobs in fp32 (vLLM's switch for RL consistency with the trainer, which
            # computes logprobs from bf16 hidden states in fp32)
            hf_overrides={"head_dtype": "float32"},
        )

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        self._require_awake("generate")
        per_prompt = [self._sampling_params(params, k) for k in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], per_prompt, use_tqdm=False)
        results = []
        for k, out in enumerate(outs):  # prompt-major, answers by their index within the prompt
            for c in sorted(out.outputs, key=lambda c: c.index):
                results.append(GenerationOutput(k, list(c.token_ids), _sampled_logprobs(c), _finish_reason(c)))
        return results

    def _sampling_params(self, params: SamplingParams, k: int):
        from vllm import SamplingParams as VSamplingParams

        seed = None if params.seed is None else _request_seed(params.seed, k)
        return VSamplingParams(
            n=params.n, temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p, max_tokens=params.max_new_tokens,
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, min_p=0.0,
            stop=list(params.stop) or None, seed=seed, logprobs=0, flat_logprobs=True,
            detokenize=bool(params.stop),  # text is decoded by the rollout worker; vLLM needs it only for stops
        )

    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[list[float]]:
        """Logprobs of `responses` via prompt logprobs (teacher forcing).

        Prompt logprobs come at temperature 1 (vLLM never processes them). For another temperature
        the whole vocabulary is requested and renormalised: log_softmax(logprobs / T) equals
        log_softmax(logits / T), since logprobs differ from logits by a constant per position.
        """
        self._require_awake("score")
        from vllm import SamplingParams as VSamplingParams

        exact = math.isclose(temperature, 1.0)
        sp = VSamplingParams(max_tokens=1, prompt_logprobs=0 if exact else -1, flat_logprobs=True, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": p + r} for p, r in zip(prompts, responses)], sp, use_tqdm=False)
        result = []
        for out, p, r in zip(outs, prompts, responses):
            flat, row = out.prompt_logprobs, []
            for pos, token in zip(range(len(p), len(p) + len(r)), r):
                lo, hi = flat.start_indices[pos], flat.end_indices[pos]
                if flat.token_ids[lo] != token:
                    raise RuntimeError(f"vLLM prompt logprobs: position {pos} holds token {flat.token_ids[lo]}, "
                                       f"expected {token}")
                if exact:
                    row.append(flat.logprobs[lo])
                    continue
                ranked = torch.tensor(flat.logprobs[lo + 1:hi], dtype=torch.float64)  # the whole vocabulary
                row.append(float(flat.logprobs[lo] / temperature - torch.logsumexp(ranked / temperature, 0)))
            result.append(row)
        return result

    # -- weights ------------------------------------------------------------------------------
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Object-store transport: one bucket of CPU tensors, shipped to every worker as safetensors bytes."""
        from safetensors.torch import save

        tensors = {name: t.detach().contiguous().cpu() for name, t in named_tensors}
        if not tensors:
            return
        self._wake(["weights"])
        self._rpc("rlvr_load_blob", save(tensors), what="loading a weight bucket into vLLM")
        self._after_load()

    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        """NCCL transport: this engine's workers take ranks rank_offset … rank_offset + TP − 1."""
        self._rpc("rlvr_init_weight_group", host, port, rank_offset, world_size, self.sync_timeout_s,
                  what="joining the trainer↔vLLM NCCL group")

    def receive_broadcast(self, plan_wire: list[dict[str, Any]]) -> None:
        """NCCL transport: receive and load every bucket of the plan that trainer rank 0 broadcasts."""
        self._wake(["weights"])
        self._rpc("rlvr_receive_broadcast", plan_wire, self.sync_timeout_s, what="receiving the NCCL weight broadcast")
        self._after_load()

    def load_ipc_bucket(self, bucket_wire: dict[str, Any], handles: dict[str, bytes]) -> None:
        """CUDA IPC transport (colocated): load one bucket from the trainer rank on each worker's GPU."""
        self._wake(["weights"])
        self._rpc("rlvr_load_ipc", bucket_wire, handles, what="loading a weight bucket over CUDA IPC")
        self._after_load()

    def finish_weight_update(self) -> None:
        """After the last bucket: give the KV cache back (colocated) and drop prefixes of the old policy."""
        self._wake(["weights", "kv_cache"])
        self.reset_prefix_cache()

    def reset_prefix_cache(self) -> None:
        """Drop cached prefixes (their KV was computed by earlier requests; results must not depend on them)."""
        self.llm.reset_prefix_cache()

    def _after_load(self) -> None:
        if not self._asleep:  # asleep: the KV cache, prefixes included, was discarded by sleep()
            self.reset_prefix_cache()

    def _rpc(self, method: str, *args: Any, what: str) -> list:
        # the deadline is kept here as well: the in-process (TP=1) executor ignores collective_rpc's timeout
        return with_deadline(lambda: self.llm.collective_rpc(method, args=args), self.sync_timeout_s, what)

    # -- colocated placement: give the GPU to the trainer between generations -----------------
    def sleep(self) -> None:
        """Free the KV cache and the weights (level 2: the next sync replaces every weight anyway)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        self._wake(["weights", "kv_cache"])

    def _wake(self, tags: list[str]) -> None:
        todo = [t for t in tags if t in self._asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)

    def _require_awake(self, what: str) -> None:
        if self._asleep:
            raise RuntimeError(f"vLLM engine: {what} while asleep ({sorted(self._asleep)}); the driver must finish "
                               f"the weight sync (finish_weight_update) before generating")


def _request_seed(seed: int, k: int) -> int:
    """A well-spread seed for prompt k. vLLM seeds answer j of a request with seed + j, and the driver
    gives rollout worker i the seed base + i, so plain offsets would make requests share random streams."""
    return random.Random(f"{seed}/{k}").randrange(2**31 - 2**16)


def _sampled_logprobs(c) -> list[float]:
    flat = c.logprobs
    if len(flat.logprobs) == len(c.token_ids):  # logprobs=0: exactly the sampled token at each position
        return list(flat.logprobs)
    return [flat.logprobs[flat.start_indices[i]] for i in range(len(c.token_ids))]


def _finish_reason(c) -> str:
    if c.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a sample with reason {c.finish_reason!r} (stop_reason={c.stop_reason!r}); "
                           f"only stop and length are expected from a rollout")
    return c.finish_reason


class WeightSyncExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); runs in the worker process, `self` is the Worker.

    Names carry an `rlvr_` prefix: vLLM refuses an extension whose names clash with the Worker's.
    """

    def rlvr_init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, timeout_s: float) -> None:
        self.rlvr_comm = nccl_group(host, port, rank_offset + self.rank, world_size, self.device, timeout_s)

    def rlvr_receive_broadcast(self, plan_wire: list[dict[str, Any]], timeout_s: float) -> int:
        deadline = Deadline(timeout_s, "receiving the NCCL weight broadcast (vLLM worker)")
        model, count = self.get_model(), 0
        for bucket in plan_from_wire(plan_wire):
            flat = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
            broadcast_bucket(self.rlvr_comm, flat, deadline)
            model.load_weights(weights=unpack_bucket(flat, bucket))
            count += len(bucket.tensors)
        torch.cuda.synchronize(self.device)
        return count

    def rlvr_load_ipc(self, bucket_wire: dict[str, Any], handles: dict[str, bytes]) -> int:
        bucket = bucket_from_wire(bucket_wire)
        flat = open_ipc(handles, self.device)
        self.get_model().load_weights(weights=unpack_bucket(flat, bucket))
        torch.cuda.synchronize(self.device)  # the trainer frees its buffer as soon as this returns
        del flat
        return len(bucket.tensors)

    def rlvr_load_blob(self, blob: bytes) -> int:
        from safetensors.torch import load

        tensors = load(blob)
        self.get_model().load_weights(weights=[(n, t.to(self.device)) for n, t in tensors.items()])
        return len(tensors)
