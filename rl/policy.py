"""The trained policy as one module: body → packed response hidden states → LM head → loss.

`PolicyModule` wraps a Hugging Face causal LM so that one `forward` call (the thing DeepSpeed
wraps) returns either per-token logprobs or the policy loss of a `MicroBatch`. Full `(b, L, V)`
logits are never formed: the body's last hidden states are gathered at the response positions
only (packed, no padding), then
- `loss_path="fused"`: `rl.ops.fused_policy_loss` computes the token-mean loss and its gradients
  chunk by chunk (other aggregation modes and GSPO fall back to the chunked
  `token_logprobs_entropy` + `policy_loss`, which is exact for every mode);
- `loss_path="naive"`: materialised fp32 logits of the response tokens + `policy_loss` (debugging).
The LM head is invoked through its own module call so that ZeRO-3's gather hooks fire for it.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from torch import nn

from rl.batch import MicroBatch, unpack
from rl.losses import policy_loss
from rl.ops import fused_policy_loss, token_logprobs_entropy
from rl.replay import staleness_weights


class PolicyModule(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def hidden_states(self, mb: MicroBatch) -> torch.Tensor:
        body = self.model.base_model
        out = body(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                   use_cache=False)
        hidden = out.last_hidden_state  # (b, L, H)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, mb.token_index)  # (n, H)

    def _call_head(self, fn: Callable[[torch.Tensor, torch.Tensor], Any], hidden: torch.Tensor) -> Any:
        """Run fn(hidden, head.weight) as the head module's forward (so ZeRO-3 gathers the weight)."""
        head = self.head
        original = head.forward
        head.forward = types.MethodType(lambda mod, h: fn(h, mod.weight), head)
        try:
            return head(hidden)
        finally:
            head.forward = original

    def forward(self, mb: MicroBatch, *, mode: str, temperature: float, loss_path: str = "fused",
                loss_params: dict | None = None, ref_logprobs: torch.Tensor | None = None,
                global_num_tokens: float | None = None, global_num_seqs: float | None = None,
                replay_staleness_cap: float | None = None):
        hidden = self.hidden_states(mb)
        if mb.num_tokens == 0:
            # A rank with no trained token in this micro-batch (padding so that all ranks run the same
            # number of collective forward/backward passes): a zero loss that still touches every
            # parameter, so ZeRO's gradient hooks fire exactly as on the other ranks.
            zero = self._call_head(lambda h, w: (h.sum() + w.sum()) * 0.0, hidden)
            return hidden.new_empty(0) if mode == "logprobs" else (zero, {})
        if mode == "logprobs":
            return self._call_head(lambda h, w: token_logprobs_entropy(
                h, w, mb.targets, temperature=temperature, with_entropy=False)[0], hidden)
        params = dict(loss_params or {})
        # the fused op covers the token-mean loss with token-level ratios and TIS weights; the rest is exact
        # through the chunked logprob op + policy_loss
        fusable = (params.get("loss_agg_mode", "token-mean") == "token-mean" and params.get("ratio_level", "token") == "token"
                   and (params.get("tis_cap") is None or params.get("tis_level", "token") == "token"))
        if loss_path == "fused" and fusable:
            return self._call_head(lambda h, w: self._fused_loss(h, w, mb, temperature, params, ref_logprobs,
                                                                 global_num_tokens, replay_staleness_cap), hidden)
        need_entropy = True  # entropy is a logged metric; the fused path computes it only when its coef needs it
        if loss_path == "naive":
            logprobs, entropy = self._call_head(lambda h, w: naive_logprobs_entropy(h, w, mb.targets, temperature), hidden)
        else:
            logprobs, entropy = self._call_head(lambda h, w: token_logprobs_entropy(
                h, w, mb.targets, temperature=temperature, with_entropy=need_entropy), hidden)
        return self._unfused_loss(logprobs, entropy, mb, params, ref_logprobs, global_num_tokens, global_num_seqs,
                                  replay_staleness_cap)

    def _fused_loss(self, h, w, mb: MicroBatch, temperature, params, ref_logprobs, global_num_tokens, replay_cap):
        params = {k: v for k, v in params.items() if k not in ("loss_agg_mode", "ratio_level", "loss_scale_factor")}
        old = mb.old_logprobs
        if old is None:  # single update per batch: the proximal policy is the current one
            with torch.no_grad():
                old, _ = token_logprobs_entropy(h, w, mb.targets, temperature=temperature, with_entropy=False)
        if params.get("tis_cap") is None:
            params.pop("tis_level", None)
        is_w, replay_metrics = sample_weights(mb, old, replay_cap)
        loss, metrics = fused_policy_loss(h, w, mb.targets, old, mb.advantages, temperature=temperature,
                                          global_num_tokens=global_num_tokens, ref_logprobs=ref_logprobs,
                                          rollout_logprobs=mb.rollout_logprobs, is_weights=is_w, **params)
        return loss, {**metrics, **replay_metrics}

    def _unfused_loss(self, logprobs, entropy, mb: MicroBatch, params, ref_logprobs, global_num_tokens,
                      global_num_seqs, replay_cap):
        rows = mb.input_ids.shape[0]
        is_w, replay_metrics = sample_weights(mb, logprobs.detach() if mb.old_logprobs is None else mb.old_logprobs,
                                              replay_cap)
        lp, mask = unpack(logprobs, mb.seq_index, rows)  # (b, T)
        old = lp.detach() if mb.old_logprobs is None else unpack(mb.old_logprobs, mb.seq_index, rows)[0]
        adv = unpack(mb.advantages, mb.seq_index, rows)[0]
        extra = {
            "rollout_logprobs": unpack(mb.rollout_logprobs, mb.seq_index, rows)[0],
            "ref_logprobs": None if ref_logprobs is None else unpack(ref_logprobs, mb.seq_index, rows)[0],
            "entropy": None if entropy is None else unpack(entropy, mb.seq_index, rows)[0],
        }
        if is_w is not None:
            extra["is_weights"] = unpack(is_w, mb.seq_index, rows)[0]
        loss, metrics = policy_loss(lp, old, adv, mask, global_num_tokens=global_num_tokens,
                                    global_num_seqs=global_num_seqs, **extra, **params)
        return loss, {**metrics, **replay_metrics}


def sample_weights(mb: MicroBatch, old: torch.Tensor, replay_cap: float | None) -> tuple[torch.Tensor | None, dict]:
    """(n,) detached per-token weights: Sample.is_weight (PER) × min(π_old/π_rollout, C) on replayed tokens
    (decoupled PPO, arXiv 2110.00641; rl/replay.py). None when every weight is 1."""
    w, metrics = mb.is_weights, {}
    if mb.replayed is not None and replay_cap is not None:
        sw, metrics = staleness_weights(old.detach()[None], mb.rollout_logprobs[None],
                                        mb.replayed[None].to(old.dtype), cap=replay_cap)
        stale = torch.where(mb.replayed, sw[0], torch.ones_like(sw[0]))
        w = stale if w is None else w * stale
    return w, metrics


def naive_logprobs_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialised fp32 logits (n, V): the debugging path and the reference the fused op must match."""
    logits = (hidden.float() @ weight.float().t()) / temperature  # (n, V)
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), entropy
