"""Fused linear -> token-mean policy loss: value AND gradients in one chunked forward pass.

    inputs = LossInputs(old_logprobs, advantages, mask, ref_logprobs=ref, global_num_tokens=n_tok_all_ranks)
    loss, metrics = fused_policy_loss(hidden, lm_head.weight, targets, inputs, LossConfig(kl_coef=0.001))
    loss.backward()   # returns the gradients computed in the forward, times the upstream scale

Why it is exact: with the global token count fixed, the token-mean loss Σ_i L_tok,i·m_i / N_tok is a sum
of per-token terms, so each chunk's contribution to the value and to dL/dh, dL/dW is final as soon as
that chunk's log-probs (and entropy) are known (the "gradient in forward" design of Liger-Kernel's
`LigerFusedLinearGRPOLoss`). Per chunk: logits z (V, n) are computed once and kept; per-token lse/entropy
come from them; d(loss)/d(logprob) and d(loss)/d(entropy) come from autograd over `rl.losses.token_loss_terms`
(the one definition of the per-token term / KL / entropy math, shared with `policy_loss`, so a plug-in
term runs fused too; importance weights and metrics come from the same functions as well);
the chain rule into z, h and W is the backward of docs/fused_ops.md, "The math". The torch path never
recomputes logits (3 GEMMs per token instead of 4); the Triton path recomputes them once inside the forward.

Exactly the value and gradients of `policy_loss(token_logprobs_entropy(...))` with
loss_agg_mode="token-mean". Other modes and the GSPO sequence ratio need whole-sequence quantities
before any token's gradient is known: use the unfused path (trainer.fused_loss=false) for them.
Masked tokens (response_mask == 0) are dropped before any work and get exactly zero gradient.
Under torch.no_grad, or when neither hidden nor weight requires grad, only the value is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rl.loss_config import LossConfig, LossInputs
from rl.losses import importance_weights, metric_table, token_loss_terms
from rl.ops.logprob import _operands, resolve_impl, triton_grads, triton_stats
from rl.ops.reference import acc_dtype, add_onehot_grad, check_inputs, chunk_grad, chunk_stats, target_logits

KEEP_BUDGET_BYTES = 256 << 20
"""Bytes of the kept (V, chunk) logits of the torch path; sets the default chunk (~420 tokens at V=151936)."""
MAX_CHUNK_TOKENS = 512
"""Beyond ~512 tokens the CPU GEMMs gain nothing, so small vocabularies keep a smaller buffer."""
UNFUSED_HINT = "use the unfused path (trainer.fused_loss=false: token_logprobs_entropy + rl.losses.policy_loss)"
_SUMS = ("loss", "pg", "kl", "entropy", "clipped_high", "clipped_low", "dual_clipped", "approx_kl", "ratio")


@dataclass
class _Tokens:
    """Per-token inputs of the valid tokens only (accumulation dtype); `m` is the mask value (≠ 0)."""

    targets: Tensor
    old: Tensor
    adv: Tensor
    m: Tensor
    ref: Tensor | None
    weights: Tensor | None

    def slice(self, a: int, b: int) -> _Tokens:
        cut = {k: (v[a:b] if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}
        return replace(self, **cut)


def _token_loss(plan: _Plan, logp: Tensor, ent: Tensor | None, tok: _Tokens,
                need_grad: bool) -> tuple[Tensor | None, Tensor | None]:
    """d(loss)/d(logprob), d(loss)/d(entropy) of one chunk by autograd over token_loss_terms; adds the
    chunk's masked sums (order: _SUMS) to plan.sums and updates plan.ratio_max."""
    ent_in_loss = plan.cfg.entropy_coef != 0.0
    with torch.enable_grad():
        lp = logp.detach().requires_grad_(need_grad)
        en = None if ent is None else ent.detach().requires_grad_(need_grad and ent_in_loss)
        loss_tok, st = token_loss_terms(lp, tok.old, tok.adv, plan.cfg, ref_logprobs=tok.ref, is_weights=tok.weights,
                                        entropy=en if ent_in_loss else None)
        part = (loss_tok * tok.m).sum() / plan.denom  # this chunk's share of Σ L·m / N_tok
        g_lp = g_ent = None
        if need_grad:
            inputs = [lp, en] if ent_in_loss else [lp]
            grads = torch.autograd.grad(part, inputs, allow_unused=True)
            g_lp, g_ent = [torch.zeros_like(lp) if g is None else g for g in grads] + [None] * (2 - len(grads))
    with torch.no_grad():
        m = tok.m
        pg = st["pg"] if tok.weights is None else st["pg"] * tok.weights
        zero = torch.zeros_like(m)
        cols = [part * plan.denom, pg * m, st["kl"] * m, zero if ent is None else ent * m,
                st["clipped_high"] * m, st["clipped_low"] * m, st["dual_clipped"] * m, (tok.old - lp) * m,
                st["ratio"] * m]
        plan.sums += torch.stack([c.sum() for c in cols])
        plan.ratio_max = torch.maximum(plan.ratio_max, st["ratio"].max()) if m.numel() else plan.ratio_max
    return g_lp, g_ent


@dataclass
class _Plan:
    """One fused_policy_loss call: valid rows, per-token inputs, loss config; `run` does the work."""

    impl: str
    hidden: Tensor  # (N, H) as given: its gradient has this shape and dtype
    weight: Tensor  # (V, H)
    h: Tensor  # (n, H) valid rows only
    rows: Tensor | None  # their indices in hidden, None = all rows
    tok: _Tokens
    cfg: LossConfig
    denom: Tensor  # clamp(global_num_tokens or local Σ m, 1)
    inv_t: float
    chunk: int
    with_ent: bool
    sums: Tensor  # (len(_SUMS),) masked sums, filled by run
    ratio_max: Tensor | None = None

    def run(self, need_h: bool, need_w: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(loss, dL/dhidden (N, H) | None, dL/dweight (V, H) | None); no gradient work if neither needed."""
        dh, dw = (_run_triton if self.impl == "triton" else _run_torch)(self, need_h, need_w)
        if dh is not None:
            dh = dh.to(self.hidden.dtype)
            if self.rows is not None:  # masked rows: exactly zero
                dh = torch.zeros_like(self.hidden).index_copy_(0, self.rows, dh)
        return self.sums[0] / self.denom, dh, (None if dw is None else dw.to(self.weight.dtype))


def _run_torch(plan: _Plan, need_h: bool, need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """Chunked torch path: per chunk, logits kept (V, c) -> stats -> per-token grads -> 2 GEMMs."""
    h, weight, tok, dt = plan.h, plan.weight, plan.tok, plan.sums.dtype
    n, H = h.shape
    V = weight.shape[0]
    need_grad = need_h or need_w
    dh = torch.zeros((n, H), dtype=dt, device=h.device) if need_h else None
    dw = torch.zeros((V, H), dtype=dt, device=h.device) if need_w else None
    chunk = max(1, min(plan.chunk, n))
    keep_flat = h.new_empty(V * chunk, dtype=dt) if need_grad and n else None  # reused every chunk
    plan.ratio_max = plan.sums.new_zeros(())
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        part = tok.slice(a, b)
        hs = h[a:b].to(dt) * plan.inv_t  # (c, H): scaled once, so every GEMM below carries the 1/T
        keep = keep_flat[: V * (b - a)].view(V, b - a) if need_grad else None  # (V, c) logits, kept
        lse, ent = chunk_stats(hs, weight, plan.with_ent, keep)
        logp = target_logits(hs, weight, part.targets) - lse
        g_lp, g_ent = _token_loss(plan, logp, ent, part, need_grad)
        if need_grad:
            dh_c = dh[a:b] if need_h else None
            chunk_grad(hs, weight, lse, ent if g_ent is not None else None, g_lp, g_ent, dh_c, dw, logits=keep)
            add_onehot_grad(hs, weight, part.targets, g_lp, dh_c, dw)
    if need_h:
        dh.mul_(plan.inv_t)  # dL/dh = dz W / T
    return dh, dw


def _run_triton(plan: _Plan, need_h: bool, need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """Kernel path: stats kernel, per-token grads, dlogits kernel + cuBLAS, all inside the forward."""
    h_op, w_op = _operands(plan.h, plan.weight)
    logp, lse, ent = triton_stats(h_op, w_op, plan.tok.targets, plan.inv_t, plan.with_ent)
    plan.ratio_max = plan.sums.new_zeros(())
    g_lp, g_ent = _token_loss(plan, logp, ent, plan.tok, need_h or need_w)
    if not (need_h or need_w):
        return None, None
    return triton_grads(h_op, w_op, plan.tok.targets, lse, ent if g_ent is not None else None, g_lp, g_ent,
                        plan.inv_t, need_h, need_w)


class FusedPolicyLoss(torch.autograd.Function):
    """forward: `plan.run` -> (loss, dh, dw); backward: hands out dh, dw times the upstream scale. The
    gradients are held only until backward, so that autograd can adopt them without a copy."""

    @staticmethod
    def forward(ctx, hidden, weight, plan):
        loss, dh, dw = plan.run(ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        ctx.grads = (dh, dw)
        return loss

    @staticmethod
    def backward(ctx, g):
        if ctx.grads is None:
            raise RuntimeError("fused_policy_loss: its gradients were already handed out; backward through it "
                               "twice (retain_graph) is not supported, call fused_policy_loss again")
        dh, dw = ctx.grads
        ctx.grads = None
        if g.device.type != "cpu" or g.item() != 1.0:  # scale in place: no second (V, H) buffer
            dh = None if dh is None else dh.mul_(g.to(dh.dtype))
            dw = None if dw is None else dw.mul_(g.to(dw.dtype))
        return dh, dw, None


def default_chunk(vocab: int, dtype: torch.dtype) -> int:
    """Tokens per chunk of the torch path: kept logits within KEEP_BUDGET_BYTES, 16..MAX_CHUNK_TOKENS."""
    return max(16, min(MAX_CHUNK_TOKENS, KEEP_BUDGET_BYTES // (vocab * torch.finfo(dtype).bits // 8)))


def _per_token(N: int, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and tuple(t.shape) != (N,):
            raise ValueError(f"fused_policy_loss: {name} must be (N,) = ({N},) like targets, got {tuple(t.shape)}; "
                             "pass flattened valid tokens (or a response_mask)")


def _check_fused_params(cfg: LossConfig) -> None:
    if cfg.loss_agg_mode != "token-mean":
        raise ValueError(f"fused_policy_loss supports loss_agg_mode='token-mean' only, got {cfg.loss_agg_mode!r}: "
                         f"{UNFUSED_HINT}")
    if cfg.ratio_level != "token":
        raise ValueError(f"fused_policy_loss: ratio_level={cfg.ratio_level!r} (GSPO sequence ratio) needs whole "
                         f"sequences before any token's gradient: {UNFUSED_HINT}")
    if not cfg.fusable:
        raise ValueError(f"fused_policy_loss: tis_level={cfg.tis_level!r} needs whole sequences: {UNFUSED_HINT}")


def _select_tokens(hidden: Tensor, targets: Tensor, mask: Tensor | None, per_token: dict[str, Tensor | None],
                   dt: torch.dtype) -> tuple[Tensor, Tensor | None, _Tokens]:
    """Valid rows only: (hidden rows, their indices or None for all, per-token inputs in dtype dt)."""
    rows = None
    if mask is not None and not bool((mask != 0).all()):
        rows = torch.nonzero(mask != 0).squeeze(1)
    pick = (lambda t: t) if rows is None else (lambda t: t[rows])
    cast = {k: None if v is None else pick(v).detach().to(dt) for k, v in per_token.items()}
    m = torch.ones(hidden.shape[0], dtype=dt, device=hidden.device) if mask is None else pick(mask).to(dt)
    tok = _Tokens(targets=pick(targets), old=cast["old"], adv=cast["adv"], m=m, ref=cast["ref"], weights=cast["is_w"])
    return pick(hidden), rows, tok


def _metrics(plan: _Plan, n_tok: Tensor) -> dict[str, float]:
    """`rl.losses.metric_table` from the chunks' sums (loss/*: / N_tok like the loss; actor/*: local means)."""
    s = dict(zip(_SUMS, plan.sums))
    parts = {k: s[k] / plan.denom for k in ("pg", "kl", "entropy") if k != "entropy" or plan.with_ent}
    return metric_table(s["loss"] / plan.denom, s, parts, n_tok, plan.ratio_max)


def fused_policy_loss(
    hidden: Tensor, weight: Tensor, targets: Tensor, inputs: LossInputs, cfg: LossConfig, *,
    temperature: float = 1.0, impl: str = "auto", chunk_size: int | None = None, compute_entropy: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """Token-mean policy loss straight from hidden states: (scalar loss, metrics).

    hidden (N, H) final hidden states of the response tokens, weight (V, H) LM head (tied embeddings
    are fine: autograd adds this op's dW to the embedding's), targets (N,) sampled token ids; `inputs`
    per token (N,) (rl.loss_config.LossInputs; response_mask optional). inputs.global_num_tokens = valid
    tokens of the whole mini-batch over all micro-batches and ranks (default: the local Σ response_mask);
    the result is Σ_local L_tok·m / global_num_tokens. `cfg.fusable` must hold (token-mean, token ratios and
    TIS). Entropy is computed only when entropy_coef != 0 or compute_entropy=True (then logged as
    actor/entropy). chunk_size = tokens per chunk of the torch path (None: sized so the kept logits take
    KEEP_BUDGET_BYTES). Metrics: `rl.losses.metric_table`, actor/* as means over local tokens.
    """
    check_inputs(hidden, weight, targets, temperature)
    N = hidden.shape[0]
    _per_token(N, **inputs.per_token())
    _check_fused_params(cfg)
    dt = acc_dtype(torch.promote_types(hidden.dtype, weight.dtype))
    # On the full (1, N) layout, as policy_loss calls it: detached, zero at masked tokens, metrics over the
    # valid tokens; token level is elementwise, so chunking cannot change it.
    mask = torch.ones_like(inputs.old_logprobs) if inputs.response_mask is None else inputs.response_mask
    is_weights, tis_metrics = importance_weights(inputs.map(lambda t: t[None]), cfg, mask[None])
    per_token = dict(old=inputs.old_logprobs, adv=inputs.advantages, ref=inputs.ref_logprobs,
                     is_w=None if is_weights is None else is_weights[0])
    h, rows, tok = _select_tokens(hidden, targets, inputs.response_mask, per_token, dt)
    n_tok = tok.m.sum()
    n_glob = inputs.global_num_tokens
    denom = n_tok if n_glob is None else torch.as_tensor(n_glob, dtype=dt, device=h.device)
    chunk = default_chunk(weight.shape[0], dt) if chunk_size is None else chunk_size
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    impl = resolve_impl(impl, hidden.device, torch.promote_types(hidden.dtype, weight.dtype))
    plan = _Plan(impl=impl, hidden=hidden, weight=weight, h=h, rows=rows, tok=tok,
                 cfg=cfg, denom=denom.detach().clamp(min=1.0), inv_t=1.0 / temperature, chunk=chunk,
                 with_ent=cfg.entropy_coef != 0.0 or compute_entropy,
                 sums=torch.zeros(len(_SUMS), dtype=dt, device=h.device))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss = FusedPolicyLoss.apply(hidden, weight, plan)
    else:
        loss = plan.run(False, False)[0]
    return loss, {**tis_metrics, **_metrics(plan, n_tok)}
