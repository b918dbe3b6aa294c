"""Typed configuration: the schema, YAML recipes, `a.b=value` overrides, validation.

The schema is a tree of dataclasses; every field has a default and a docstring (the string literal
under it), and defaults live only here. A recipe YAML states only what differs from the schema;
command-line overrides `a.b=value` are merged on top. OmegaConf does the YAML parsing, merging and
type checking; this module turns its errors into messages that name the key and the fix. Unknown keys are
found by walking each recipe and the overrides against the schema before merging, so that all of them are
reported at once, each with the nearest key or, for a TRL/verl/OpenRLHF name, ours (launch/foreign_keys.py).

    cfg = load_config("configs/quickstart.yaml", ["trainer.total_steps=5"])
    save_config(cfg, "outputs/run/config.yaml")
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import difflib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from launch.foreign_keys import FOREIGN_KEYS, translate
from launch.schema_algorithm import AlgorithmConfig
from rl.faults import Fault
from rl.lr_schedule import LR_SCHEDULERS

ASYNC_MODES = ("sync", "one_step_off", "async")
"""trainer.async_mode values (launch/lookahead.py runs the overlapped ones)."""


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the key and how to fix it."""


@dataclass(frozen=True)
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    """Policy model: an alias (`smollm2-135m-instruct`, `tiny-random`), a local Hugging Face model
    directory, or a hub name (needs network). Aliases are converted once into `cache_dir`."""
    dtype: str = "auto"
    """Compute dtype of training and generation: `auto` = bfloat16 on GPUs; on a CPU, bf16 compute only where the
    CPU multiplies bf16 natively (Intel AMX), else float32 (rl/precision.py says why: AVX512-BF16 alone measured
    no faster); `float32` or `bfloat16` force either (float16: GPUs only). CPU bf16 is autocast over fp32 weights,
    gradients and Adam state, with the LM head, logprobs and loss in fp32; the startup log prints the choice."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (slower)."""
    trust_remote_code: bool = False
    """Passed to transformers for hub models that ship their own modelling code."""
    cache_dir: str = "~/.cache/rlvr/models"
    """Where model aliases are materialised as Hugging Face directories."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype={self.dtype!r}: use one of auto, float32, bfloat16, float16")


@dataclass(frozen=True)
class ArithConfig:
    num_terms: int = 3
    """Number of operands in each built-in arithmetic prompt (3 single digits: the 135M model starts near 14%)."""
    max_operand: int = 9
    """Operands are drawn uniformly from 0..max_operand."""
    train_size: int = 20000
    """Number of generated training prompts."""
    eval_size: int = 200
    """Number of generated held-out prompts (a disjoint seed, and no prompt shared with train)."""

    def __post_init__(self) -> None:
        if self.num_terms < 2 or self.max_operand < 1:
            raise ConfigError("data.arith: need num_terms >= 2 and max_operand >= 1")


@dataclass(frozen=True)
class DataConfig:
    train: Any = "arith"
    """Training prompts: `arith` (built-in task), a local .jsonl/.json/.parquet file or glob, a `datasets`
    hub name (`name`, `name:split` or `name:config:split`; needs network) or a dataset directory, or a list
    of files/globs/names (concatenated). verl parquet and TRL standard/conversational files need no other
    data keys."""
    eval: Any = "auto"
    """Held-out prompts for eval (same forms as `train`); null: no eval; `auto`: `arith` when training on
    the built-in task, otherwise no eval."""
    prompt_key: str = "prompt"
    """Dataset column holding the prompt: text, or a list of chat messages (rendered with the chat
    template, system messages kept). A dotted key reads a nested field."""
    answer_key: str | None = "answer"
    """Dataset column holding the reference answer (passed to reward functions as `answer`); a dotted key
    reads a nested field (`reward_model.ground_truth`, found by itself in verl files). Optional: with the
    default, a source without the column has no answer; null: never read one."""
    system_prompt: str | None = None
    """System message for chat templating; null keeps the tokenizer's default."""
    chat_template: bool = True
    """Render prompts with the tokenizer's chat template (off: the raw question text)."""
    prompt_suffix: str = ""
    """Text appended to every question before templating (e.g. an answer-format instruction)."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (in tokens) are an error naming the row (see filter_overlong_prompts)."""
    filter_overlong_prompts: bool = False
    """Drop prompts longer than max_prompt_tokens instead of stopping; the count is logged and written to
    metrics.jsonl (data/dropped_overlong_train, data/dropped_overlong_eval) at step 0."""
    eval_size: int = 200
    """At most this many eval prompts are scored at each eval."""
    shuffle: bool = True
    """Reshuffle the training prompts every epoch (seeded by trainer.seed)."""
    arith: ArithConfig = field(default_factory=ArithConfig)
    """Settings of the built-in `arith` task."""

    def __post_init__(self) -> None:
        for key in ("train", "eval"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, str) and v.strip() for v in value):
                    raise ConfigError(f"data.{key}={list(value)}: a list of sources must hold file paths, globs or "
                                      "hub names")
                object.__setattr__(self, key, list(value))
            elif not (isinstance(value, str) and value.strip()) and not (key == "eval" and value is None):
                raise ConfigError(f"data.{key}={value!r}: give a file, glob, hub name, `arith` or a list of these"
                                  + (" (null: no eval)" if key == "eval" else ""))

    @property
    def eval_source(self) -> str | list[str] | None:
        """`eval` with `auto` resolved: the built-in task has its own held-out split; a user's data needs one
        named (load_config writes the resolved value, so config.yaml shows it)."""
        if self.eval == "auto":
            return "arith" if self.train == "arith" else None
        return self.eval


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"
    """Generation engine: `hf` (transformers, runs anywhere) or `vllm` (GPU clusters)."""
    num_workers: int = 1
    """R: number of rollout worker actors; prompts are sharded across them."""
    group_size: int = 8
    """G: answers sampled per prompt (one GRPO group)."""
    temperature: float = 1.0
    """Sampling temperature; the trainer divides logits by the same value."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 128
    """Maximum response length; a response that hits it is `truncated` (finish reason `length`)."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (EOS always stops)."""
    batch_size: int = 64
    """Sequences per generate() call on one worker (memory knob)."""
    gpus_per_worker: float = 0.0
    """GPUs per rollout worker (0 on CPU). For vLLM this is its tensor-parallel size; the hf engine uses one."""
    placement: str = "split"
    """GPU layout: `split` (rollout and trainer on disjoint GPUs; weights by NCCL) or `colocated` (each GPU
    holds one trainer rank and one rollout TP worker, which sleeps during training; needs
    rollout.num_workers × rollout.gpus_per_worker == trainer.num_workers; weights by CUDA IPC)."""
    gpu_memory_utilization: float = 0.85
    """vLLM only: fraction of each rollout GPU vLLM may fill with weights and KV cache (colocated: leave
    room for the trainer, e.g. 0.4)."""
    weight_transport: str = "auto"
    """How new weights reach the rollout workers: `auto` (vLLM on GPUs: NCCL when split, CUDA IPC when
    colocated; otherwise, and in the overlapped trainer.async_mode values, the Ray object store),
    `object_store`, `nccl` or `ipc`."""
    sync_timeout_s: float = 600.0
    """Deadline of one weight sync; when it passes the run stops with an error naming the stuck side."""
    stream_samples: int = 0
    """Streamed scoring: each worker generates its share in calls of about this many samples (whole groups: at least
    one prompt, stream_samples // n prompts), and each call's samples go to the reward workers as soon as it returns
    while the worker generates the next, so a slow reward overlaps generation even with one rollout worker.
    0: one call per worker (its samples are scored once all of them are generated). Smaller calls batch fewer
    sequences: worth it when scoring takes about as long as generating or longer."""
    threads_per_worker: int = 0
    """CPU only: torch threads per rollout worker (0: as trainer.threads_per_worker). With trainer.async_mode other
    than `sync` the rollout workers and the trainer ranks run at once, so each actor is pinned to its own cores."""
    tools: list[Any] = field(default_factory=list)
    """Multi-turn tool use (rollout/multiturn.py): the tools the model may call, each a built-in (`calculator`,
    `python`, `search`), "pkg.module:fn" or "path/to/file.py:fn" (a function with a docstring and typed arguments
    that returns a string), or {fn, args} binding arguments the model does not pass, e.g.
    {fn: search, args: {corpus: docs.jsonl}}. Empty: single-turn rollouts."""
    tool_format: str = "json"
    """How the model calls a tool: `json` (<tool_call>{"name": ..., "arguments": {...}}</tool_call>, the syntax of
    Hermes/Qwen2.5 chat templates; a template that renders tools is given their schemas) or `tag`
    (<calculator>12*7</calculator>: one argument per tool, for small models without a tool template)."""
    max_turns: int = 4
    """Model turns per trajectory; a trajectory whose last turn still calls a tool ends truncated."""
    tool_timeout_s: float = 10.0
    """Per-call deadline of a tool: past it the call is stopped and the model reads an error observation."""
    tool_workers: int = 2
    """Sandboxed tool processes per rollout worker (the calls of one turn run concurrently across them), at
    reward.sandbox's level and under reward.cgroup's limits."""
    tool_instructions: str | None = "auto"
    """How the prompts present the tools: `auto` (a chat template that renders tools gets their schemas, others a
    system-prompt text listing the tools and the call syntax, rollout/tools.py `instructions`), null (nothing added:
    the data's prompts describe the tools themselves) or your own text, added to the system prompt as given."""
    tool_response_template: str | None = None
    """The text around a tool's output, with "{observation}" in it; null: the format's own
    ("\\n<tool_response>\\n{observation}\\n</tool_response>\\n" for json, "<result>{observation}</result>" for tag)."""

    def __post_init__(self) -> None:
        if self.tool_format not in ("json", "tag"):
            raise ConfigError(f"rollout.tool_format={self.tool_format!r}: use `json` or `tag`")
        if self.max_turns < 1:
            raise ConfigError(f"rollout.max_turns={self.max_turns}: must be >= 1")
        if self.tool_timeout_s <= 0 or self.tool_workers < 1:
            raise ConfigError("rollout.tool_timeout_s must be > 0 and rollout.tool_workers >= 1")
        if self.tool_response_template is not None and "{observation}" not in self.tool_response_template:
            raise ConfigError(f"rollout.tool_response_template={self.tool_response_template!r}: it must contain "
                              "{observation}, where the tool's output goes")
        if not isinstance(self.tools, list):
            raise ConfigError(f"rollout.tools={self.tools!r}: a list of tool specs, e.g. [calculator]")
        if self.engine not in ("hf", "vllm"):
            raise ConfigError(f"rollout.engine={self.engine!r}: use `hf` or `vllm`")
        if self.placement not in ("split", "colocated"):
            raise ConfigError(f"rollout.placement={self.placement!r}: use `split` or `colocated`")
        if self.weight_transport not in ("auto", "object_store", "nccl", "ipc"):
            raise ConfigError(f"rollout.weight_transport={self.weight_transport!r}: use auto, object_store, nccl or ipc")
        if not 0.0 < self.gpu_memory_utilization < 1.0:
            raise ConfigError(f"rollout.gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1)")
        if self.stream_samples < 0:
            raise ConfigError(f"rollout.stream_samples={self.stream_samples}: use 0 (one generate call per worker) "
                              "or the number of samples per call (>= 1)")
        if self.sync_timeout_s <= 0:
            raise ConfigError(f"rollout.sync_timeout_s={self.sync_timeout_s}: must be > 0")
        if self.engine == "vllm" and self.gpus_per_worker < 1:
            raise ConfigError("rollout.engine=vllm needs GPUs: set rollout.gpus_per_worker to the tensor-parallel "
                              "size (1, 2, 4 or 8), or use rollout.engine=hf on CPU")
        if self.engine == "hf" and self.gpus_per_worker > 1:
            raise ConfigError(f"rollout.gpus_per_worker={self.gpus_per_worker:g}: the hf engine uses one GPU; use "
                              f"rollout.engine=vllm for tensor parallelism")
        if self.group_size < 1 or self.num_workers < 1 or self.max_new_tokens < 1:
            raise ConfigError("rollout.group_size, rollout.num_workers and rollout.max_new_tokens must be >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"rollout.top_p={self.top_p}: must be in (0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature={self.temperature}: must be > 0 (eval uses greedy decoding)")
        if self.engine == "vllm" and not 0.01 <= self.temperature <= 2.0:
            # vLLM refuses temperatures above 2 and silently samples greedily below 0.01, while the trainer
            # would still divide by the configured value: the logprobs would no longer match
            raise ConfigError(f"rollout.temperature={self.temperature}: with rollout.engine=vllm it must lie in "
                              "[0.01, 2] (vLLM's range); use rollout.engine=hf for other temperatures")


@dataclass(frozen=True)
class RewardConfig:
    fns: list[Any] = field(default_factory=lambda: ["arith"])
    """Reward functions: built-in names, `pkg.mod:fn` or `path/to/file.py:fn` (native, verl, TRL and OpenRLHF
    signatures are recognised), or dicts of per-function options {fn, name, weight, timeout_s, sandbox,
    data_sources, api, args, env, isolation}; summed with their weights. Each is called on a real dataset
    row at start-up. A function's `sandbox` is a level as for reward.sandbox; `env` lists environment variables its workers
    get besides the allowlist (e.g. [OPENAI_API_KEY] for a judge; each must be set at start); `isolation:
    worker` runs its calls in the worker process instead of a fresh process per call (faster; only for
    functions that never execute what they score, see docs/reward.md)."""
    weights: list[float] | None = None
    """One weight per entry of `fns` (default: all 1.0; or `weight` in a function's dict, not both)."""
    sandbox: str = "full"
    """Isolation level of the reward workers, required, not best effort: `full` (no network, a minimal
    read-only filesystem with a private /tmp, own PID namespace, a uid of its own, seccomp, limits; needs
    root), `userns` (the same namespaces, the runner's uid; needs unprivileged user namespaces), `rlimits` (limits only) or `off` (explicitly none). Workers that cannot reach it refuse
    to start, at the start-up check, saying what they reached and how to get it. `true`/`false` (the old
    form) mean full/off. A function that needs the network (an LLM judge, a reward model over HTTP) sets
    `sandbox: off` in its own entry; the `code` verifier requires userns or full. The level in force is
    logged at start."""
    cgroup: str = "auto"
    """How the workers' memory and process limits are enforced: `auto` gives each worker's sandbox a control
    group (cgroup v2 where delegated to the trainer, or a writable v1 memory/pids hierarchy) that holds the
    limits for all its processes together and kills them all at teardown, falling back to per-process rlimits
    (which a function that forks can multiply) where the host allows none; `required` refuses to start
    without one; `off` uses rlimits only. Which applies is logged at start."""
    num_workers: int = 1
    """K: number of reward worker actors."""
    processes_per_worker: int = 2
    """Sandboxed processes per reward worker."""
    timeout_s: float = 10.0
    """Per-call deadline, enforced from outside the sandboxed process."""
    accuracy_fn: str | None = None
    """The reward function (by name: a built-in's name, or `fn` of a `file.py:fn` spec) whose `acc` defines a
    sample's correctness, for eval/accuracy and dynamic sampling on `acc`; null: the one function that reports
    `acc` (the built-ins math, dapo_math, arith and code do; format does not). Accuracy never comes from the
    weighted reward; with no function reporting `acc`, eval logs eval/reward_mean only."""

    def __post_init__(self) -> None:
        if not self.fns:
            raise ConfigError("reward.fns is empty: name at least one reward function, e.g. reward.fns=[arith]")
        if self.weights is not None and len(self.weights) != len(self.fns):
            raise ConfigError(
                f"reward.weights has {len(self.weights)} entries for {len(self.fns)} reward.fns: give one per fn"
            )
        for i, entry in enumerate(self.fns):
            if not isinstance(entry, (str, dict)):
                raise ConfigError(f"reward.fns[{i}]={entry!r}: give a spec string or a dict like {{fn: math, "
                                  "weight: 1.0}}")
            if isinstance(entry, dict) and "weight" in entry and self.weights is not None:
                raise ConfigError(f"reward.fns[{i}] has its own weight and reward.weights is set too; keep one")
        fns = [dict(e, sandbox=_level(e["sandbox"], f"reward.fns[{i}].sandbox"))
               if isinstance(e, dict) and e.get("sandbox") is not None else e for i, e in enumerate(self.fns)]
        object.__setattr__(self, "fns", fns)  # config.yaml shows levels, not the old booleans
        object.__setattr__(self, "sandbox", _level(self.sandbox, "reward.sandbox"))
        if self.cgroup not in ("auto", "required", "off"):
            raise ConfigError(f"reward.cgroup={self.cgroup!r}: use auto, required or off")

    def specs(self) -> list[dict[str, Any]]:
        """`fns` as spec dicts, `weights` folded in (reward.registry resolves them)."""
        weights = self.weights or [None] * len(self.fns)
        out = []
        for entry, w in zip(self.fns, weights):
            spec = {"fn": entry} if isinstance(entry, str) else dict(entry)
            if w is not None:
                spec["weight"] = w
            out.append(spec)
        return out


def _level(value: Any, key: str) -> str:
    from reward.sandbox import normalize_level  # the standard library only

    try:
        return normalize_level(value, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


@dataclass(frozen=True)
class TrainerConfig:
    num_workers: int = 1
    """W: DeepSpeed data-parallel ranks (Ray actors)."""
    gpus_per_worker: float = 0.0
    """GPUs per trainer rank (0 on CPU: gloo backend)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0, 1, 2 or 3)."""
    lr: float = 1e-6
    """AdamW learning rate (DeepSeekMath GRPO: 1e-6)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: str = "linear"
    """LR schedule after the warm-up: `linear` or `cosine` (both decay to 0) over the run's planned optimizer
    steps, total_steps × mini_batches × epochs, or `constant`; a run that takes fewer (a step with fewer samples
    than mini_batches, or one ended by max_generated_tokens) ends above 0. transformers' schedules
    (rl/lr_schedule.py). Linear is the default because at a constant lr Adam keeps moving the policy at full step
    size once most groups are solved and only a few noisy ones carry gradient, and held-out accuracy falls late in
    the run (docs/benchmarks.md, learning quality); paper recipes that use a constant lr set it."""
    warmup_steps: int = 0
    """Linear LR warm-up, in optimizer steps: the first runs at lr/warmup_steps, the warmup_steps-th at lr."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    train_prompts: int = 8
    """B: prompts per training step (each gives G samples)."""
    mini_batches: int = 1
    """Optimizer updates per step: the step's samples are split into this many mini-batches."""
    epochs: int = 1
    """Passes over the step's samples."""
    micro_batch_tokens: int = 8192
    """Token budget (prompt + response, padded) of one micro-batch on one rank."""
    share_prompts: bool | None = None
    """Compute each prompt once per micro-batch: the samples of one prompt form one row, `prompt + response_1 +
    response_2 + ...`, under a block attention mask (each response sees the prompt and itself, at its generation
    positions), so a group of G answers costs P + ΣR tokens instead of G·P + ΣR; logprobs are unchanged up to
    float summation order. null: on for CPU ranks, off on GPUs (there the dense mask gives up the flash kernels
    for a small saving on long answers); true/false force it. Needs `eager` or `sdpa` attention; the trainer
    checks the model at load and says why when it cannot share."""
    fused_loss: bool = True
    """Compute logprobs/loss from hidden states with the chunked fused op (false: materialise logits)."""
    total_steps: int = 100
    """Training steps (one step = generate, score, update, sync)."""
    max_generated_tokens: int | None = None
    """Also stop after the step at which the run's sampled response tokens (every round, dropped groups included;
    eval excluded) reach this budget; null = total_steps only. For compute-matched comparisons."""
    eval_every: int = 10
    """Run held-out greedy eval every this many steps (0: only at start and end)."""
    kl_probe: int = 32
    """Answers of step 1 (sampled from the starting policy) kept as a fixed probe: after every update the trainer
    scores them and logs actor/kl_to_start, the k3 estimate of KL(π_start‖π) per token at the rollout temperature
    (one no-grad forward of this many sequences per step); 0 disables."""
    eval_k: int = 0
    """Also sample this many answers per held-out prompt at each eval (at eval.temperature, eval.top_p) and log
    eval/avg@k and eval/pass@k' for k' = 1, 2, 4, ..., k (rl/passk.py); 0: greedy only."""
    save_every: int = 50
    """Write a checkpoint every this many steps (0: only the final one)."""
    keep_last: int = 2
    """Keep this many most recent checkpoints."""
    checkpoint_hf: bool = True
    """Write a Hugging Face export `hf/` (safetensors + tokenizer) inside every checkpoint, inside its atomic save,
    for `python -m launch.eval` and vLLM. Costs one model copy in the training dtype per checkpoint (with AdamW the
    DeepSpeed state is 4 to 7 times larger) and one gather of the full weights, as a weight sync does."""
    output_dir: str = "outputs/run"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    resume: str = "auto"
    """`auto` (newest complete checkpoint in output_dir, if any), `never`, or a checkpoint path."""
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    threads_per_worker: int = 0
    """CPU only: torch threads per trainer rank, and per rollout worker unless rollout.threads_per_worker is set.
    0: in `sync` mode each role gets the machine's cores split over its workers (the phases take turns); in the
    overlapped modes the cores are split between the roles in proportion to their workers, disjointly."""
    async_mode: str = "sync"
    """How generation and training overlap (docs/architecture.md, "Overlapped training"):
    `sync`: generate, score, train, sync weights, one after another (every sample on-policy);
    `one_step_off`: step k+1's samples are generated and scored with the weights step k starts from while step k
    trains (staleness exactly 1 from step 2 on; deterministic for a seed, resumed exactly);
    `async`: the rollout workers generate batch after batch, each with the newest weights published, at most
    trainer.max_staleness versions behind the policy that trains on it.
    The overlapped modes need algorithm.loss.tis_level (the decoupled objective: the trainer's logprobs are the
    proximal policy, the engine's the behaviour policy; AReaL, arXiv 2505.24298) and rollout.placement=split."""
    max_staleness: int = 1
    """`async` only: the most policy versions a trained sample may lag the trainer (S >= 1); a batch starts
    generating only once the weights it needs are published."""

    def __post_init__(self) -> None:
        if self.async_mode not in ASYNC_MODES:
            raise ConfigError(f"trainer.async_mode={self.async_mode!r}: use one of {', '.join(ASYNC_MODES)}")
        if self.max_staleness < 1:
            raise ConfigError(f"trainer.max_staleness={self.max_staleness}: must be >= 1 (0 staleness is "
                              "trainer.async_mode=sync)")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"trainer.zero_stage={self.zero_stage}: use 0, 1, 2 or 3")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"trainer.lr_scheduler={self.lr_scheduler!r}: use one of {', '.join(LR_SCHEDULERS)}")
        if self.kl_probe < 0:
            raise ConfigError(f"trainer.kl_probe={self.kl_probe}: must be >= 0 (0: no KL-to-start metric)")
        if self.warmup_steps < 0:
            raise ConfigError(f"trainer.warmup_steps={self.warmup_steps}: must be >= 0 (0: no warm-up)")
        if self.resume not in ("auto", "never") and not self.resume:
            raise ConfigError("trainer.resume: use auto, never, or a checkpoint directory")
        for key in ("num_workers", "train_prompts", "mini_batches", "epochs", "total_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key}={getattr(self, key)}: must be >= 1")
        if self.eval_k < 0:
            raise ConfigError(f"trainer.eval_k={self.eval_k}: must be >= 0 (0: greedy eval only)")
        if self.max_generated_tokens is not None and self.max_generated_tokens < 1:
            raise ConfigError(f"trainer.max_generated_tokens={self.max_generated_tokens}: must be >= 1, or null "
                              "for no token budget")


@dataclass(frozen=True)
class EvalConfig:
    k: int = 8
    """`python -m launch.eval`: sampled answers per prompt, for avg@k and pass@k' at k' = 1, 2, 4, ..., k
    (0: greedy only). The training-time eval samples trainer.eval_k instead."""
    greedy: bool = True
    """`python -m launch.eval`: also generate one greedy answer per prompt (greedy accuracy)."""
    temperature: float = 1.0
    """Sampling temperature of the sampled answers (launch.eval and trainer.eval_k)."""
    top_p: float = 1.0
    """Nucleus sampling mass of the sampled answers (launch.eval and trainer.eval_k)."""
    seed: int = 0
    """Seed of the sampled answers and of the bootstrap resampling."""
    max_prompts: int | None = None
    """`python -m launch.eval`: evaluate only the first this many prompts of DATA (null: all)."""
    output: str | None = None
    """`python -m launch.eval`: directory for report.json, samples.jsonl and quarantine.jsonl; null: `eval/` in
    the run directory of a checkpoint or final/ (`RUN/eval/step_N-DATA/`), else `outputs/eval/MODEL-DATA/`."""
    bootstrap: int = 1000
    """Bootstrap resamples of the prompts for every confidence interval (0: intervals collapse to the value)."""
    ci_level: float = 0.95
    """Confidence level of the intervals (percentile bootstrap over prompts)."""

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ConfigError(f"eval.k={self.k}: must be >= 0 (0: greedy only)")
        if self.k == 0 and not self.greedy:
            raise ConfigError("eval.k=0 with eval.greedy=false evaluates nothing: set eval.k >= 1 or eval.greedy=true")
        if self.temperature <= 0:
            raise ConfigError(f"eval.temperature={self.temperature}: must be > 0 (greedy answers: eval.greedy=true)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"eval.top_p={self.top_p}: must be in (0, 1]")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"eval.max_prompts={self.max_prompts}: must be >= 1, or null for every prompt")
        if self.bootstrap < 0:
            raise ConfigError(f"eval.bootstrap={self.bootstrap}: must be >= 0")
        if not 0.0 < self.ci_level < 1.0:
            raise ConfigError(f"eval.ci_level={self.ci_level}: must be in (0, 1), e.g. 0.95")


@dataclass(frozen=True)
class FaultsConfig:
    rollout_timeout_s: float = 3600.0
    """Deadline of one call on a rollout worker (a shard's generation, a weight update). On expiry the worker's
    stacks are dumped into the error, it is replaced and the call retried."""
    reward_timeout_s: float = 600.0
    """Deadline of one batch on a reward worker (each function call inside also has reward.timeout_s)."""
    trainer_timeout_s: float = 3600.0
    """Deadline of one call on the trainer ranks (a training step, a checkpoint, a weight gather), and the
    torch.distributed timeout of every collective (instead of gloo's 30 minutes and NCCL's 10)."""
    start_timeout_s: float = 900.0
    """Deadline for a worker to start (load its model, join its group)."""
    max_worker_restarts: int = 3
    """Replacements of one rollout or reward worker within one step before the run stops, naming it."""
    max_trainer_restarts: int = 2
    """Rebuilds of the trainer group per run (a rank died or hung): each restores the newest complete checkpoint
    and replays the steps since."""
    max_failed_reward_steps: int = 3
    """Stop the run when every sample of this many consecutive steps failed its reward (0: never stop)."""
    inject: list[str] = field(default_factory=list)
    """Chaos testing: faults to inject into workers, each `ROLE:INDEX:METHOD:CALL:ACTION` (rl/faults.py), e.g.
    `trainer:1:train_step:3:kill`. Empty in real runs."""

    def __post_init__(self) -> None:
        for key in ("rollout_timeout_s", "reward_timeout_s", "trainer_timeout_s", "start_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"faults.{key}={getattr(self, key)}: must be > 0 seconds")
        for key in ("max_worker_restarts", "max_trainer_restarts", "max_failed_reward_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"faults.{key}={getattr(self, key)}: must be >= 0")
        for spec in self.inject:
            try:
                Fault.parse(spec)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def faults(self) -> tuple[Fault, ...]:
        return tuple(Fault.parse(s) for s in self.inject)


@dataclass(frozen=True)
class LoggingConfig:
    wandb_mode: str = "offline"
    """wandb mode: offline (default; no network), online, or disabled."""
    wandb_project: str = "rlvr"
    """wandb project name."""
    console: str = "rich"
    """Console output: `rich` (progress bar on a terminal; one plain line per step when stdout is not one,
    e.g. under `ray job submit`, nohup or SLURM) or `plain` (always one line per step)."""
    tensorboard: bool = False
    """Also write every metric to TensorBoard event files in `<output_dir>/tensorboard/` (needs the
    `tensorboard` package: pip install "rlvr[tensorboard]"). Steps redone after a resume replace the old ones."""
    samples_per_step: int = 8
    """How many of each step's samples (the first ones, whole groups first) go to samples.jsonl: rendered prompt,
    completion, reward, per-function metrics, advantage; 0 writes none."""

    def __post_init__(self) -> None:
        if self.samples_per_step < 0:
            raise ConfigError(f"logging.samples_per_step={self.samples_per_step}: must be >= 0 (0 writes none)")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError('logging.tensorboard=true needs the tensorboard package: pip install "tensorboard>=2.15" '
                              "(or set logging.tensorboard=false)")


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None
    """Ray cluster address; null joins the cluster of `ray job submit` (RAY_ADDRESS) or starts a local one."""
    num_cpus: int | None = None
    """CPUs for a locally started cluster (default: all)."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and answers."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Verifiable rewards."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantages, policy loss, dynamic sampling, overlong handling."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Optimisation, schedule and outputs."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Sampled evaluation: `python -m launch.eval` and trainer.eval_k."""
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    """Deadlines, restarts and recovery."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Console and wandb."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Cluster connection."""

    def __post_init__(self) -> None:
        mode = self.trainer.async_mode
        if mode != "sync" and self.rollout.placement == "colocated":
            raise ConfigError(f"trainer.async_mode={mode} overlaps generation with training, but "
                              "rollout.placement=colocated puts both on the same GPUs and sleeps the engine while "
                              "the trainer runs: use rollout.placement=split, or trainer.async_mode=sync")
        if mode != "sync" and self.rollout.weight_transport in ("nccl", "ipc"):
            raise ConfigError(f"trainer.async_mode={mode} loads weights into the rollout workers between their "
                              f"batches, which rollout.weight_transport={self.rollout.weight_transport} cannot (it "
                              "needs both sides in one collective): use rollout.weight_transport=object_store (or "
                              "auto, which picks it in the overlapped modes), or trainer.async_mode=sync")
        loss = self.algorithm.loss
        if mode != "sync" and (loss.tis_level is None or loss.tis_scope != "all"):
            raise ConfigError(f"trainer.async_mode={mode} trains on samples a policy version old, which need an "
                              "off-policy correction: set algorithm.loss.tis_level=token (the truncated IS weight "
                              "min(π_proximal/π_behaviour, algorithm.loss.tis_cap) on every row, with "
                              "algorithm.loss.tis_scope=all), or use trainer.async_mode=sync")
        ds = self.algorithm.dynamic_sampling
        if mode != "sync" and ds.enable and ds.carry_surplus:
            raise ConfigError(f"algorithm.dynamic_sampling.carry_surplus=true with trainer.async_mode={mode}: a "
                              "carried group would be one more version old than the staleness bound allows; set "
                              "carry_surplus=false (the surplus is discarded, as in DAPO) or trainer.async_mode=sync")
        sampled = self.trainer.eval_k > 0 or self.eval.k > 0
        if self.rollout.engine == "vllm" and sampled and not 0.01 <= self.eval.temperature <= 2.0:
            # as for rollout.temperature: vLLM refuses above 2 and samples greedily below 0.01
            raise ConfigError(f"eval.temperature={self.eval.temperature}: with rollout.engine=vllm it must lie in "
                              "[0.01, 2] (vLLM's range); use rollout.engine=hf for other temperatures")


def schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """All dotted leaf keys of the schema, e.g. `trainer.lr`."""
    keys = []
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f.name)
        if dataclasses.is_dataclass(typ):
            keys += schema_keys(typ, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _field_type(cls: type, name: str) -> Any:
    hints = inspect.get_annotations(cls, eval_str=True)
    return hints[name]


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (string literals right under each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _suggest(key: str) -> str:
    """How to fix unknown `key`: the translation of a TRL/verl/OpenRLHF name written in full; else our key with
    the same last component (`lr` -> trainer.lr); else a foreign name's suffix or nesting (`rollout.n`); else
    the nearest key by spelling."""
    keys = schema_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if key.lstrip("-") in FOREIGN_KEYS or not same_leaf:
        foreign = translate(key)
        if foreign:
            return foreign
    close = same_leaf or difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    return f"did you mean {close[0]}?" if close else "see `python -m launch.train --help` for every key"


def _unknown_keys(node: Any, cls: type, prefix: str = "") -> list[str]:
    """The dotted keys of `node` (a recipe or the overrides, as plain containers) that `cls` has no field for.
    Below an unknown key every leaf is listed, so `actor_rollout_ref: {rollout: {n: 8}}` reports
    `actor_rollout_ref.rollout.n`, which has a translation, rather than `actor_rollout_ref`."""
    if not isinstance(node, dict):
        return []
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = []
    for name, value in node.items():
        key = f"{prefix}{name}"
        if name not in fields:
            unknown += _leaves(value, key)
        elif dataclasses.is_dataclass(typ := _field_type(cls, name)):
            unknown += _unknown_keys(value, typ, key + ".")
    return unknown


def _leaves(node: Any, key: str) -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for name, value in node.items() for leaf in _leaves(value, f"{key}.{name}")]
    return [key]


def _check_keys(recipes: list[tuple[Path, Any]], overrides: list[str]) -> None:
    """Raise one ConfigError listing every unknown key of every recipe file and override, one per line, each
    with its source and fix, so that a config written for another framework is fixed in one round."""
    lines = [f"{path}: {key}: unknown key; {_suggest(key)}"
             for path, recipe in recipes
             for key in _unknown_keys(OmegaConf.to_container(recipe), Config)]
    for item in overrides:
        name = item.split("=", 1)[0]
        for key in _unknown_keys(OmegaConf.to_container(OmegaConf.from_dotlist([item])), Config):
            lines.append(f"command line: {item if key == name else key}: unknown key; {_suggest(key)}")
    if lines:
        raise ConfigError("\n".join(lines))


def _merge(base, other, source: str):
    try:
        return OmegaConf.merge(base, other)
    except ValidationError as e:
        msg = str(e.msg).splitlines()[0]
        raise ConfigError(f"{source}: bad value for `{e.full_key}`: {msg}") from None


def _parse_overrides(overrides: list[str]):
    for item in overrides:
        if "=" not in item or item.startswith("="):
            foreign = translate(item)
            hint = f" ({foreign})" if foreign else ""
            raise ConfigError(f"override `{item}`: write overrides as dotted.key=value, e.g. trainer.lr=1e-5{hint}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"overrides {overrides}: {e}") from None


def _load_recipes(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, Any]]:
    """The recipe at `path` after the recipes it extends, base first; a recipe may start with
    `extends: other.yaml` (a path relative to its own file) and then states only the differences."""
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} not found{where}: pass a recipe such as configs/quickstart.yaml")
    if path.resolve() in {p.resolve() for p in chain}:
        raise ConfigError(f"{chain[0]}: `extends` loops back to {path} ({' -> '.join(map(str, (*chain, path)))})")
    try:
        recipe = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    recipe = recipe or OmegaConf.create({})
    bases: list[tuple[Path, Any]] = []
    if "extends" in recipe:
        base = recipe.pop("extends")
        if not isinstance(base, str) or not base.endswith((".yaml", ".yml")):
            raise ConfigError(f"{path}: `extends: {base}` must name one YAML recipe, e.g. extends: grpo.yaml")
        bases = _load_recipes(path.parent / base, (*chain, path))
    return [*bases, (path, recipe)]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults ← recipe YAML (after the recipes it `extends`) ← `a.b=value` overrides, validated;
    returns a `Config`. Every unknown key, of every source, is reported in one ConfigError."""
    recipes = _load_recipes(Path(path)) if path is not None else []
    cli = _parse_overrides(list(overrides))
    _check_keys(recipes, list(overrides))
    merged = OmegaConf.structured(Config)
    for recipe_path, recipe in recipes:
        merged = _merge(merged, recipe, str(recipe_path))
    merged = _merge(merged, cli, "command line")
    try:
        cfg = OmegaConf.to_object(merged)
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval=cfg.data.eval_source))
    except ConfigError:
        raise
    except ValueError as e:  # a section's __post_init__ validation; its message names key and fix
        raise ConfigError(str(e)) from None
    except OmegaConfBaseException as e:
        cause = e.__cause__ if isinstance(e.__cause__, ValueError) else None
        raise ConfigError(str(cause or e)) from None


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config (every key, defaults included) as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


@dataclass(frozen=True)
class KeyDoc:
    """One schema key as the reference and `--help` show it."""

    section: str
    key: str
    type_name: str
    default: Any
    doc: str


def key_docs(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key with its type, default and docstring, section by section (a section's own keys first,
    then its subsections), in schema order; docs/configuration.md and `--help` are printed from this."""
    docs = field_docs(cls)
    leaves, subsections = [], []
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f.name)
        if dataclasses.is_dataclass(typ):
            subsections += key_docs(typ, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        type_name = getattr(typ, "__name__", str(typ)).replace("typing.", "").replace(" | ", " or ")
        leaves.append(KeyDoc(prefix.rstrip("."), prefix + f.name, type_name, default, docs.get(f.name, "")))
    return leaves + subsections


def reference_markdown() -> str:
    """docs/configuration.md: every key, its type, default and docstring (generated from the schema)."""
    lines = ["# Configuration reference", "",
             "Generated from the schema in `launch/config.py` and `launch/schema_algorithm.py` by",
             "`python -m launch.config > docs/configuration.md` (a test checks it is current).",
             "Recipes state only what differs; override any key with `dotted.key=value`.", ""]
    section = None
    for k in key_docs():
        if k.section != section:
            if section is not None:
                lines.append("")
            section = k.section
            lines.extend([f"## `{section}`", "", "| key | type | default | meaning |", "|---|---|---|---|"])
        lines.append(f"| `{k.key}` | {k.type_name} | `{k.default!r}` | {k.doc.replace(chr(10), ' ')} |")
    lines.append("")
    return "\n".join(lines)


def help_text() -> str:
    """The key list of `python -m launch.train --help`: one line per key (type, default, the first sentence of
    its docstring), grouped by section, so `--help | grep kl` finds a key without opening the docs."""
    lines = ["config keys (override any with dotted.key=value; docs/configuration.md has the full text):"]
    section = None
    for k in key_docs():
        if k.section != section:
            section = k.section
            lines.extend(["", f"{section}:"])
        first = re.split(r"\.\s+(?=[A-Z])", k.doc.replace("\n", " "))[0].rstrip(".")
        lines.append(f"  {k.key} ({k.type_name}, default {k.default!r}): {first}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
