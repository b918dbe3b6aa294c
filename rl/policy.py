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
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from rl.batch import MicroBatch, attention_bias, collate, collate_shared, unpack
from rl.loss_config import LossConfig, LossInputs
from rl.losses import kl_penalty, policy_loss
from rl.ops import fused_policy_loss, token_logprobs_entropy
from rl.precision import Precision
from rl.types import Sample


class PolicyModule(nn.Module):
    """`logit_scale`: the model's own multiplier on its LM-head logits (Cohere `logit_scale`, Granite
    1/`logits_scaling`), folded into the temperature so that the fused op sees plain `h·Wᵀ / T`."""

    def __init__(self, model: nn.Module, body_precision: Precision | None = None):
        super().__init__()
        disable_dropout(model)
        self.model = model
        self.logit_scale = check_head(model)
        self.body_precision = body_precision  # bf16 autocast on a CPU (rl.precision); None: the weights' dtype

    @property
    def head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def hidden_states(self, mb: MicroBatch) -> torch.Tensor:
        body = self.model.base_model
        precision = self.body_precision
        mask = mb.attention_mask
        if mb.segment_ids is not None:  # shared-prompt rows: a block mask, in the dtype attention runs in
            dtype = precision.compute if precision is not None else next(self.model.parameters()).dtype
            mask = attention_bias(mb.segment_ids, dtype)
        with precision.body() if precision is not None else nullcontext():
            out = body(input_ids=mb.input_ids, attention_mask=mask, position_ids=mb.position_ids, use_cache=False)
        hidden = out.last_hidden_state  # (b, L, H)
        if self.body_precision is not None and self.body_precision.autocast:
            hidden = hidden.to(self.body_precision.params)  # the head, logprobs and loss in fp32
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
                loss: LossConfig | None = None, ref_logprobs: torch.Tensor | None = None,
                global_num_tokens: float | None = None, global_num_seqs: float | None = None):
        temperature = temperature / self.logit_scale
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
        if loss is None:
            raise ValueError("PolicyModule(mode='loss') needs loss=LossConfig(...)")
        inputs = LossInputs(mb.old_logprobs, mb.advantages, rollout_logprobs=mb.rollout_logprobs,
                            ref_logprobs=ref_logprobs, is_weights=mb.is_weights, replayed=mb.replayed,
                            global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs)
        # the fused op covers the token-mean loss with token-level ratios and TIS weights; the rest is exact
        # through the chunked logprob op + policy_loss
        if loss_path == "fused" and loss.fusable:
            return self._call_head(lambda h, w: self._fused_loss(h, w, mb, temperature, inputs, loss), hidden)
        # entropy is always computed: a logged metric (clip-higher exists to keep it from collapsing)
        if loss_path == "naive":
            logprobs, entropy = self._call_head(lambda h, w: naive_logprobs_entropy(h, w, mb.targets, temperature), hidden)
        else:
            logprobs, entropy = self._call_head(lambda h, w: token_logprobs_entropy(
                h, w, mb.targets, temperature=temperature, with_entropy=True), hidden)
        return self._unfused_loss(logprobs, entropy, mb, inputs, loss)

    def _fused_loss(self, h, w, mb: MicroBatch, temperature, inputs: LossInputs, loss: LossConfig):
        parity = {}
        if inputs.old_logprobs is None:  # single update per batch: the proximal policy is the current one
            with torch.no_grad():
                old, _ = token_logprobs_entropy(h, w, mb.targets, temperature=temperature, with_entropy=False)
            inputs, parity = replace(inputs, old_logprobs=old), parity_sums(old, mb.rollout_logprobs, mb.replayed)
        out, metrics = fused_policy_loss(h, w, mb.targets, inputs, loss, temperature=temperature, compute_entropy=True)
        return out, {**metrics, **parity}

    def _unfused_loss(self, logprobs, entropy, mb: MicroBatch, inputs: LossInputs, loss: LossConfig):
        rows = mb.num_sequences
        parity = {}
        if inputs.old_logprobs is None:
            inputs, parity = (replace(inputs, old_logprobs=logprobs.detach()),
                              parity_sums(logprobs.detach(), mb.rollout_logprobs, mb.replayed))
        lp, mask = unpack(logprobs, mb.seq_index, rows)  # (b, T)
        inputs = replace(inputs.map(lambda t: unpack(t, mb.seq_index, rows)[0]), response_mask=mask)
        out, metrics = policy_loss(lp, inputs, loss, entropy=unpack(entropy, mb.seq_index, rows)[0])
        return out, {**metrics, **parity}


PARITY_KEYS = ("parity/count", "parity/abs_sum", "parity/k3_sum", "parity/abs_max")


def parity_sums(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                replayed: torch.Tensor | None = None) -> dict[str, float]:
    """Engine/trainer mismatch on the sampled tokens, as sums to combine over micro-batches and ranks:
    token count, Σ|ℓ^π − ℓ^μ|, Σ k3 and max |ℓ^π − ℓ^μ|, with ℓ^π the trainer's logprob of a rollout
    token before the update and ℓ^μ the engine's. k3 = r − 1 − log r with r = π/μ is Schulman's unbiased,
    non-negative estimator of KL(μ‖π) on tokens drawn from μ. Replayed tokens (`replayed` True) are left
    out: their gap is their age, not an engine mismatch. `rl.steps.train_metrics` turns the ranks' sums
    into rollout/logprob_diff_mean, rollout/logprob_diff_max and rollout/behaviour_kl_k3."""
    with torch.no_grad():
        t = trainer_logprobs.detach().double()
        r = rollout_logprobs.detach().to(t.device).double()
        if replayed is not None:
            keep = ~replayed.to(t.device)
            t, r = t[keep], r[keep]
        diff = (t - r).abs()
        k3 = kl_penalty(r, t, "k3")  # exp(ℓ^π − ℓ^μ) − (ℓ^π − ℓ^μ) − 1
        vals = torch.stack([diff.new_tensor(float(diff.numel())), diff.sum(), k3.sum(),
                            diff.max() if diff.numel() else diff.new_zeros(())]).tolist()
    return dict(zip(PARITY_KEYS, vals))


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere, in train mode too: the policy-gradient ratio compares two forward passes
    of the same weights (and the rollout engine never drops), so dropout noise would be pure bias.
    Covers nn.Dropout modules and the float `*dropout*` attributes that attention code reads directly."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name, value in list(vars(config).items()) if config is not None else []:
        if "dropout" in name and isinstance(value, float):
            setattr(config, name, 0.0)


class UnsupportedHeadError(ValueError):
    """The model's LM head does something the hidden-state loss path would silently leave out."""


@torch.no_grad()
def check_head(model: nn.Module) -> float:
    """The multiplier the model applies to `h·Wᵀ` (1.0 for most models), after checking that
    softmax(logit_scale · h·Wᵀ) really is the model's own next-token distribution.

    The trainer computes logprobs from final hidden states and the head weight (never materialising
    logits), so a head bias, logit soft-capping (Gemma-2) or any other transform of the logits would be
    dropped silently while the rollout engine applies it. Known scalings are folded into the temperature
    (Cohere `logit_scale`, Granite `logits_scaling`); anything else is refused here, at load, by comparing
    one short forward pass of the model against the hidden-state path."""
    cfg = model.config
    name = type(model).__name__
    if getattr(cfg, "final_logit_softcapping", None):
        raise UnsupportedHeadError(
            f"{name}: final_logit_softcapping={cfg.final_logit_softcapping} (tanh soft-capping of the logits) is "
            "not supported by the trainer's hidden-state loss path; train a model without logit soft-capping")
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise UnsupportedHeadError(f"{name}: no output embedding (LM head) weight found")
    if getattr(head, "bias", None) is not None:
        raise UnsupportedHeadError(f"{name}: the LM head has a bias, which the trainer's hidden-state loss path "
                                   "does not add; train a model whose head is a plain linear map")
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)  # Cohere: logits * logit_scale
    if getattr(cfg, "logits_scaling", None):  # Granite: logits / logits_scaling
        scale /= float(cfg.logits_scaling)
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([[min(1, head.weight.shape[0] - 1), min(2, head.weight.shape[0] - 1)]],
                           device=head.weight.device)
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state  # as PolicyModule reads it
        ours = torch.log_softmax(scale * hidden.float() @ head.weight.float().t(), -1)
        logits = model(input_ids=ids, use_cache=False).logits
        theirs = torch.log_softmax(logits.float(), -1)
    finally:
        model.train(was_training)
    gap = float((ours - theirs).abs().max())
    # Error model: the model rounds each logit z to its dtype (|δz| <= u·|z|, u = eps/2) where we keep fp32;
    # a log-softmax difference is then at most 2·u·max|z|, plus fp32 summation-order noise.
    tol = torch.finfo(logits.dtype).eps * float(logits.float().abs().max()) + 1e-4
    if gap > tol:
        raise UnsupportedHeadError(
            f"{name}: its logits differ from logit_scale·(final hidden state · head weight) by up to {gap:.3g} "
            "nats (a transform of the logits the trainer does not know about); this architecture is not supported")
    return scale


@torch.no_grad()
def check_shared_prompts(policy: PolicyModule) -> str | None:
    """None when the model computes shared-prompt rows (rl.batch.collate_shared) exactly as separate
    sequences, else the reason it cannot. Needs an attention implementation that takes the 4-D block mask
    as given (`eager`, `sdpa`); then one tiny two-answer row is checked against the two sequences, in fp32.
    Error model: both layouts add the same fp32 products in a different order, a few ulps of O(10) logits
    (~1e-5 nats); a model that ignored the block mask would differ by O(1) nats. Tolerance 1e-3."""
    model = policy.model
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in ("eager", "sdpa"):
        return (f"{type(model).__name__} uses attn_implementation={attn!r}, which does not take a 4-D block "
                "attention mask; shared-prompt rows need `eager` or `sdpa`")
    vocab = policy.head.weight.shape[0]
    tok = lambda *ids: [i % vocab for i in ids]
    samples = [Sample(0, 0, tok(1, 2, 3), tok(4, 5, 6), [0.0] * 3, "stop", 0),
               Sample(1, 0, tok(1, 2, 3), tok(7, 8), [0.0] * 2, "stop", 0)]
    device = policy.head.weight.device
    was_training, precision = model.training, policy.body_precision
    policy.eval()
    policy.body_precision = None  # the check is about the layout, not the rounding: compare in the weights' dtype
    try:
        lp = [policy(_to_device(mb, device), mode="logprobs", temperature=1.0).float()
              for mb in (collate(samples, [0, 1], 0, [True, True]), collate_shared(samples, [[0, 1]], 0, [True, True]))]
    finally:
        policy.body_precision = precision
        policy.train(was_training)
    gap = float((lp[0] - lp[1]).abs().max())
    if not gap <= 1e-3:
        return (f"{type(model).__name__} gives logprobs {gap:.3g} nats apart for a prompt computed once and for "
                "the same sequences computed separately (it does not honour a custom 4-D attention mask)")
    return None


def _to_device(mb: MicroBatch, device: torch.device) -> MicroBatch:
    return replace(mb, **{k: v.to(device) for k, v in vars(mb).items() if isinstance(v, torch.Tensor)})


def naive_logprobs_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialised fp32 logits (n, V): the debugging path and the reference the fused op must match."""
    logits = (hidden.float() @ weight.float().t()) / temperature  # (n, V)
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), entropy
