"""Hugging Face transformers rollout engine: the embedded default that runs anywhere, CPU included.

Batched sampling with a KV cache in its own decode loop (left padding, position ids from the attention
mask), returning the generated token ids untouched, the sampled tokens' logprobs at the sampling
temperature, and a finish reason. Top-p truncation shapes which token is drawn but, as in the trainer,
the recorded logprob is that of the full temperature-scaled distribution, so behaviour and trainer
logprobs are directly comparable. The loop does what `model.generate` cannot for GRPO: each prompt is
prefilled once for all of its samples (the cache rows are repeated), the prefill computes the logits
of the last position only, and rows that have ended leave the batch.

No sampling default of the checkpoint (a repetition penalty, top-k, min-p, no-repeat n-grams, ..., as
Qwen2.5-Instruct ships in its `generation_config`) acts: the loop applies only the knobs our config
names, so the recorded logprobs are those of the distribution the tokens were drawn from. The model's
`generation_config` is also replaced at load by one that keeps only the special token ids, for any
caller of `engine.model.generate`.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, NoReturn

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rl import precision
from rl.policy import check_head
from rollout.engine import GenerationOutput, SamplingParams


class HFEngine:
    tensor_parallel_size = 1
    """One process, one device: no tensor parallelism."""

    def __init__(self, model_path: str, *, dtype: str = "auto", device: str | None = None,
                 batch_size: int = 64, trust_remote_code: bool = False):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision.resolve(dtype, self.device.type)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=self.precision.params, trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        # bf16 autocast (CPU): the body in bf16, the head in fp32 with the model's own logit scale, as the trainer
        self.logit_scale = check_head(self.model) if self.precision.autocast else 1.0
        self.batch_size = batch_size
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.model.generation_config = neutral_generation_config(self.model.generation_config)
        takes = inspect.signature(self.model.forward).parameters
        self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
        self._cache_kwarg = "cache" if "cache" in takes else "past_key_values"  # renamed in transformers 5.x
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        # one autocast region for the whole call: autocast casts each fp32 weight to bf16 once and reuses it
        with self.precision.body():
            if params.seed is None:
                return self._generate(prompts, params)
            # seeded: a private RNG stream, so the caller's global RNG is left exactly as it was
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(params.seed)
                return self._generate(prompts, params)

    def _forward(self, last_only: bool, **inputs) -> tuple[torch.Tensor, Any]:
        """(logits, cache) of one forward: logits (b, V) of the last position if last_only, else (b, L, V)."""
        if not self.precision.autocast:
            out = self.model(use_cache=last_only, **inputs, **(self._last_logits_only if last_only else {}))
            return (out.logits[:, -1] if last_only else out.logits), _output_cache(out)
        out = self.model.base_model(use_cache=last_only, **inputs)
        hidden = out.last_hidden_state[:, -1] if last_only else out.last_hidden_state
        with torch.autocast(self.device.type, enabled=False):
            logits = self.model.get_output_embeddings()(hidden.float()) * self.logit_scale
        return logits, _output_cache(out)

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        # Prompts sorted by length so each chunk pads little; a chunk holds whole groups (a prompt's n samples
        # share its prefill), at most batch_size rows. Output is prompt-major: row k*n + j is sample j of prompt k.
        order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
        per_chunk = max(1, self.batch_size // params.n)
        outputs: list[GenerationOutput | None] = [None] * (len(prompts) * params.n)
        for start in range(0, len(order), per_chunk):
            chunk = order[start:start + per_chunk]
            for r, out in enumerate(self._generate_chunk([prompts[k] for k in chunk], params)):
                k = chunk[r // params.n]
                out.prompt_index = k
                outputs[k * params.n + r % params.n] = out
        return outputs  # type: ignore[return-value]

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationOutput]:
        """`params.n` samples of each prompt, decoded step by step with a KV cache.

        Each distinct prompt is prefilled once and its cache rows repeated for its n samples (every sample
        of a GRPO group shares the prompt: n times less prefill than a row per sample). Rows that have
        ended (EOS or a stop string) leave the batch, so the later steps run on the live rows only. Per
        step only the (rows, V) logits of the last position exist: logprob = log_softmax(z / T) at the
        drawn token; top-p truncation (the smallest set of tokens whose probability reaches top_p, at
        least one) shapes the draw only, and greedy takes the argmax with logprobs at T = 1.
        """
        n, steps = params.n, params.max_new_tokens
        temperature = 1.0 if params.greedy else params.temperature
        input_ids, mask = left_pad(prompts, self.pad_id, self.device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(True, input_ids=input_ids, attention_mask=mask, position_ids=position)
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
            position = position.repeat_interleave(n, 0)
        rows = len(prompts) * n
        ids: list[list[int]] = [[] for _ in range(rows)]
        lps: list[list[float]] = [[] for _ in range(rows)]
        live = torch.arange(rows, device=self.device)  # output row of each batch row
        last = position[:, -1:]
        eos = torch.tensor(self.eos_ids, device=self.device)
        for t in range(steps):
            scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
            token = scaled.argmax(-1) if params.greedy else _sample(scaled, params.top_p)
            logp = torch.log_softmax(scaled, -1).gather(-1, token[:, None]).squeeze(-1)
            done = torch.isin(token, eos)
            for b, (row, tok, lp) in enumerate(zip(live.tolist(), token.tolist(), logp.tolist())):
                ids[row].append(tok)
                lps[row].append(lp)
                if params.stop and not done[b] and self._has_stop(ids[row], params.stop):
                    done[b] = True
            if t + 1 == steps or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                live, token, mask, last = live[keep], token[keep], mask[keep], last[keep]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            last = last + 1
            logits, cache = self._forward(True, input_ids=token[:, None], attention_mask=mask, position_ids=last,
                                          **{self._cache_kwarg: cache})
        results = []
        for row in range(rows):
            end, reason = self._response_end(ids[row], params)
            results.append(GenerationOutput(0, ids[row][:end], lps[row][:end], reason))
        return results

    def _has_stop(self, ids: list[int], stop: list[str]) -> bool:
        """Whether the newest token completed a stop string. Checked after every token, so a stop string
        first appears in the last tokens: at most 4 per character (UTF-8 bytes), plus one for a merge."""
        window = 4 * max(len(s) for s in stop) + 1
        text = self.tokenizer.decode(ids[-window:], skip_special_tokens=False)
        return any(s in text for s in stop)

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
        with self.precision.body():
            logits, _ = self._forward(False, input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids)
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (b, L, V)
        out = []
        width = input_ids.shape[1]
        for b, r in enumerate(responses):
            # token at column c is predicted by column c-1; the response occupies the last len(r) columns
            cols = torch.arange(width - len(r), width, device=self.device)
            out.append(logp[b, cols - 1, input_ids[b, cols]].tolist())
        return out


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _sample(scaled: torch.Tensor, top_p: float, block: int = 256) -> torch.Tensor:
    """One token per row from softmax(scaled), truncated to the top-p nucleus (the highest-probability tokens
    whose mass first reaches top_p; the most likely token always stays).

    Drawn by inverting the CDF in two levels: u ~ U[0, mass) picks a block of `block` consecutive tokens
    against the float64 running sum of the block masses, then a token inside that block against the float64
    running sum of its probabilities. Every token of probability p > 0 is drawn with probability p (to
    float64 rounding) and a token of p = 0 (outside the nucleus) never. A flat float64 cumsum over the whole
    vocabulary is a sequential scan per row; the block sums vectorise and the two scans are V / block and
    block long: 15.5 ms -> 2.6 ms per draw of 64 rows x 49k tokens on 2 CPU cores, in isolation (the same
    tokens as the flat scan; the quickstart's decode loop did not get measurably faster).
    torch.multinomial draws the same distribution through one exponential variate per vocabulary entry,
    which costs more still."""
    probs = nucleus(torch.softmax(scaled, -1), top_p)
    rows, vocab = probs.shape
    if vocab % block:
        probs = torch.nn.functional.pad(probs, (0, block - vocab % block))
    blocks = probs.view(rows, -1, block)
    mass = blocks.sum(-1, dtype=torch.float64)
    block_cdf = mass.cumsum(-1)
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * block_cdf[:, -1:]
    # u rounds up to the total mass once in ~2^53 draws: that takes the last block of positive mass
    last_block = torch.where(mass > 0, torch.arange(mass.shape[-1], device=probs.device), -1).amax(-1, keepdim=True)
    b = torch.minimum(torch.searchsorted(block_cdf, u, right=True), last_block)  # (rows, 1)
    # u's offset inside block b: u - (mass before b) >= 0, since block_cdf[b - 1] <= u
    offset = u - torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp(min=0)), 0.0)
    inside = blocks.gather(1, b[:, :, None].expand(-1, 1, block)).squeeze(1)  # (rows, block)
    k = torch.searchsorted(inside.double().cumsum(-1), offset, right=True)
    # the block's sum and its running sum may round apart by an ulp: an offset past the running sum's end
    # takes the block's last token of positive probability (block b has positive mass: block_cdf steps at b)
    last_positive = torch.where(inside > 0, torch.arange(block, device=probs.device), -1).amax(-1, keepdim=True)
    k = torch.minimum(k, last_positive)
    return (b * block + k).squeeze(-1)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` (rows, V) with every token outside the top-p nucleus set to 0 (not renormalised): the nucleus is
    the smallest set of most likely tokens whose mass reaches top_p (Holtzman et al. 2020), never empty."""
    if top_p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # the mass before a token already reaches top_p
    return probs.scatter(-1, idx, sorted_p.masked_fill(outside, 0.0))


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
