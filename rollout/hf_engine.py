"""Hugging Face transformers rollout engine: the embedded default that runs anywhere, CPU included.

Batched sampling with a KV cache through `model.generate` (left padding, position ids from the
attention mask), returning the generated token ids untouched, the sampled tokens' logprobs at the
sampling temperature, and a finish reason. Top-p truncation shapes which token is drawn but, as in
the trainer, the recorded logprob is that of the full temperature-scaled distribution, so behaviour
and trainer logprobs are directly comparable.

The checkpoint's own `generation_config` (a repetition penalty, top-k, min-p, no-repeat n-grams, ...,
as Qwen2.5-Instruct ships) is replaced at load by one that keeps only the special token ids: every
sampling knob in force is one our config names, so the recorded logprobs are those of the
distribution the tokens were drawn from.
"""

from __future__ import annotations

from typing import Any, Iterable, NoReturn

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rollout.engine import GenerationOutput, SamplingParams


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class HFEngine:
    tensor_parallel_size = 1
    """One process, one device: no tensor parallelism."""

    def __init__(self, model_path: str, *, dtype: str = "auto", device: str | None = None,
                 batch_size: int = 64, trust_remote_code: bool = False):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        self.batch_size = batch_size
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.model.generation_config = neutral_generation_config(self.model.generation_config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        if params.seed is None:
            return self._generate(prompts, params)
        # seeded: a private RNG stream, so the caller's global RNG is left exactly as it was
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(params.seed)
            return self._generate(prompts, params)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        # prompt-major expansion: row k*n + j is sample j of prompt k
        rows = [(k, p) for k, p in enumerate(prompts) for _ in range(params.n)]
        # Sort by prompt length so each generate() call pads little; restore order afterwards.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
        outputs: list[GenerationOutput | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, out in zip(idx, self._generate_batch([rows[i][1] for i in idx], params)):
                out.prompt_index = rows[i][0]
                outputs[i] = out
        return outputs  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        input_ids, attention_mask = left_pad(prompts, self.pad_id, self.device)
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
                      output_logits=True, return_dict_in_generate=True)
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        gen = out.sequences[:, input_ids.shape[1]:]  # (b, T)
        temperature = 1.0 if params.greedy else params.temperature
        # one step at a time: never a (b, T, V) tensor, only (b, V) per step
        logprobs = torch.stack([
            torch.log_softmax(step_logits.float() / temperature, dim=-1).gather(-1, gen[:, t:t + 1]).squeeze(-1)
            for t, step_logits in enumerate(out.logits)
        ], dim=1)  # (b, T)
        results = []
        for b in range(gen.shape[0]):
            ids = gen[b].tolist()
            end, reason = self._response_end(ids, params)
            results.append(GenerationOutput(0, ids[:end], logprobs[b, :end].tolist(), reason))
        return results

    def _response_end(self, ids: list[int], params: SamplingParams) -> tuple[int, str]:
        """Length of the real response in a padded row, and why it ended."""
        eos_at = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if params.stop:  # a stop string ends the row; the padding after it may equal EOS
            limit = eos_at if eos_at is not None else len(ids)
            for i in range(1, limit + 1):
                text = self.tokenizer.decode(ids[:i], skip_special_tokens=False)
                if any(s in text for s in params.stop):
                    return i, "stop"
        if eos_at is not None:
            return eos_at + 1, "stop"
        return len(ids), "length"

    # -- weights and scoring -----------------------------------------------------------------
    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        for name, tensor in named_tensors:
            if name not in params:
                raise KeyError(f"weight sync: the rollout model has no parameter {name!r}")
            params[name].copy_(tensor.to(params[name].dtype))

    def sleep(self) -> None:
        """Nothing to release: the HF engine keeps no KV cache between generate() calls."""

    def finish_weight_update(self) -> None:
        """Nothing to refresh: no cache outlives a generate() call."""

    # the GPU transports load into vLLM's workers in place; this engine only has load_weights
    def init_weight_group(self, host: str, port: int, rank_offset: int, world_size: int) -> None:
        _object_store_only("init_weight_group")

    def receive_broadcast(self, plan_wire: list[dict[str, Any]]) -> None:
        _object_store_only("receive_broadcast")

    def load_ipc_bucket(self, bucket_wire: dict[str, Any], handles: dict[str, bytes]) -> None:
        _object_store_only("load_ipc_bucket")

    @torch.no_grad()
    def score(self, prompts: list[list[int]], responses: list[list[int]], temperature: float) -> list[list[float]]:
        seqs = [p + r for p, r in zip(prompts, responses)]
        input_ids, attention_mask = left_pad(seqs, self.pad_id, self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (b, L, V)
        out = []
        width = input_ids.shape[1]
        for b, r in enumerate(responses):
            # token at column c is predicted by column c-1; the response occupies the last len(r) columns
            cols = torch.arange(width - len(r), width, device=self.device)
            out.append(logp[b, cols - 1, input_ids[b, cols]].tolist())
        return out


def _object_store_only(method: str) -> NoReturn:
    raise NotImplementedError(f"HFEngine.{method}: the hf engine takes weights only through the object store "
                              f"(load_weights); the nccl and ipc transports need rollout.engine=vllm. Use "
                              f"rollout.weight_transport=object_store or auto")


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def neutral_generation_config(source: GenerationConfig | None) -> GenerationConfig:
    """A generation config with the checkpoint's special token ids and nothing else: no sampling
    default of the checkpoint (repetition_penalty, top_k, min_p, temperature, ...) can act unasked."""
    ids = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return GenerationConfig(**{k: getattr(source, k) for k in ids if getattr(source, k, None) is not None})


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [i for i in ids if i is not None]
