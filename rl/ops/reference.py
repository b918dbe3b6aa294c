"""Pure-torch chunked twin of the fused linear -> logprob/entropy op (docs/fused_ops.md, "The math").

    logprobs, entropy = token_logprobs_entropy_torch(hidden, weight, targets, temperature=0.7)

z = hidden @ weight.T / T is never materialised as a full (N, V) tensor. Tokens are processed in
chunks of `chunk_size` rows and the vocabulary in tiles of VOCAB_TILE rows of `weight`; each tile
updates per-token online-softmax statistics (running max M, S = Σ exp(z - M), B = Σ exp(z - M)(z - M))
in fp32 (fp64 for fp64 inputs). Only (lse, entropy) per token are saved for the backward, which
recomputes each logits tile and applies

    dL/dz = g_l (onehot_y - p) - g_H p (z - E_p[z]),     z - E_p[z] = (z - lse) + H

This file is the CPU path, the oracle for the Triton kernel (rl/ops/logprob.py), and the engine of
the torch path of rl/ops/fused_loss.py, which reuses `chunk_stats` / `chunk_grad` below.
"""

from __future__ import annotations

import torch
from torch import Tensor

VOCAB_TILE = 4096
"""Rows of `weight` per logits tile: a (VOCAB_TILE, chunk) fp32 tile plus one temporary stays in L2/L3."""
CHUNK_TOKENS = 512
"""Default token chunk of the recompute path: big enough that each weight tile read is amortised over
many tokens (GEMM efficiency), small enough that the tile temporaries stay a few tens of MB."""


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32 for bf16/fp16/fp32 inputs, fp64 for fp64 (so fp64 parity tests are exact)."""
    return torch.promote_types(dtype, torch.float32)


def check_inputs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> None:
    """Shape checks shared by every implementation; errors name the offending argument."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected hidden (N, H) and weight (V, H), got hidden {tuple(hidden.shape)} and weight "
            f"{tuple(weight.shape)}; flatten (B, T, H) hidden states to valid tokens first"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be (N,) = ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _weight_tile(weight: Tensor, start: int, end: int, dtype: torch.dtype) -> Tensor:
    # Upcasting one tile at a time keeps bf16 weights from ever being copied whole to fp32.
    return weight[start:end].to(dtype)


def chunk_stats(
    hs: Tensor,  # (n, H) hidden chunk already divided by T, accumulation dtype
    weight: Tensor,  # (V, H)
    with_entropy: bool,
    keep: Tensor | None = None,  # (V, n) if the caller wants the scaled logits kept (fused loss)
    vocab_tile: int = VOCAB_TILE,
) -> tuple[Tensor, Tensor | None]:
    """One pass over the vocabulary: returns lse (n,) and entropy (n,) | None of z = hs @ weight.T."""
    n, dt = hs.shape[0], hs.dtype
    V = weight.shape[0]
    hs_t = hs.t()  # (H, n): z^T tile = W_tile @ hs^T is a contiguous block of rows of `keep`
    buf = hs.new_empty((min(vocab_tile, V), n)) if keep is None else None
    tmp = hs.new_empty((min(vocab_tile, V), n))
    # exp(z - M) may overwrite z unless the caller keeps the logits: one tile buffer less.
    tmp2 = hs.new_empty((min(vocab_tile, V), n)) if with_entropy and keep is not None else buf
    M = S = B = None
    for s in range(0, V, vocab_tile):
        e = min(s + vocab_tile, V)
        z = keep[s:e] if keep is not None else buf[: e - s]  # (v, n)
        torch.mm(_weight_tile(weight, s, e, dt), hs_t, out=z)
        m_new = z.amax(dim=0) if M is None else torch.maximum(M, z.amax(dim=0))  # (n,)
        d = torch.sub(z, m_new, out=tmp[: e - s])  # (v, n) z - M <= 0
        if with_entropy:
            p = torch.exp(d, out=tmp2[: e - s])
            s_t = p.sum(dim=0)
            b_t = p.mul_(d).sum(dim=0)  # Σ e^(z-M) (z-M): all terms <= 0, no cancellation
        else:
            s_t = d.exp_().sum(dim=0)
        if M is None:
            S, B = s_t, (b_t if with_entropy else None)
        else:
            delta = M - m_new  # (n,) <= 0: rescale the running sums to the new max
            alpha = delta.exp()
            if with_entropy:
                B = alpha * (B + delta * S) + b_t
            S = alpha * S + s_t
        M = m_new
    lse = M + S.log()
    entropy = S.log() - B / S if with_entropy else None  # H = log S - B/S, both terms >= 0
    return lse, entropy


def chunk_grad(
    hs: Tensor,  # (n, H) hidden chunk divided by T, accumulation dtype
    weight: Tensor,  # (V, H)
    lse: Tensor,  # (n,)
    entropy: Tensor | None,  # (n,) needed iff g_ent is given
    g_lp: Tensor,  # (n,) dL/dlogprob
    g_ent: Tensor | None,  # (n,) dL/dentropy, None = no entropy term
    dh: Tensor | None,  # (n, H) accumulator for dL/d(hs) (caller multiplies by 1/T)
    dw: Tensor | None,  # (V, H) accumulator for dL/dW
    logits: Tensor | None = None,  # (V, n) scaled logits kept by chunk_stats; None = recompute
    vocab_tile: int = VOCAB_TILE,
) -> None:
    """Accumulates the softmax part of dL/dz into dh and dw, tile by tile (the onehot part is added by
    the caller as a gather/index_add, see `add_onehot_grad`)."""
    n, dt = hs.shape[0], hs.dtype
    V = weight.shape[0]
    buf = hs.new_empty((min(vocab_tile, V), n)) if logits is None else None
    tmp = hs.new_empty((min(vocab_tile, V), n)) if g_ent is not None else None
    if g_ent is not None:
        # dz = -p (g_l + g_H (log p + H)) = p * (c1 log p + c0); log p = z - lse is formed first so that
        # large logits do not cancel inside c1 z + c0.
        c1 = -g_ent
        c0 = -g_ent * entropy - g_lp
    for s in range(0, V, vocab_tile):
        e = min(s + vocab_tile, V)
        w = _weight_tile(weight, s, e, dt)  # (v, H)
        if logits is None:
            z = torch.mm(w, hs.t(), out=buf[: e - s])  # (v, n) recomputed tile
        else:
            z = logits[s:e]
        if g_ent is None:
            dz = z.sub_(lse).exp_().mul_(-g_lp)  # (v, n) -g_l p, in place over the tile
        else:
            logp = z.sub_(lse)
            p = torch.exp(logp, out=tmp[: e - s])
            dz = logp.mul_(c1).add_(c0).mul_(p)
        if dh is not None:
            dh.addmm_(dz.t(), w)  # (n, v) @ (v, H)
        if dw is not None:
            dw[s:e].addmm_(dz, hs)  # (v, n) @ (n, H); hs carries the 1/T of dW = dz^T h / T


def target_logits(hs: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """z_y = hs · W[y] per token (n,): a gather, independent of the vocab tiling."""
    return (hs * weight[targets].to(hs.dtype)).sum(dim=-1)


def add_onehot_grad(
    hs: Tensor, weight: Tensor, targets: Tensor, g_lp: Tensor, dh: Tensor | None, dw: Tensor | None
) -> None:
    """The g_l * onehot_y part of dL/dz, applied without forming a (n, V) one-hot."""
    if dh is not None:
        dh.add_(weight[targets].to(hs.dtype) * g_lp[:, None])
    if dw is not None:
        dw.index_add_(0, targets, hs * g_lp[:, None])


def forward_chunks(
    hidden: Tensor, weight: Tensor, targets: Tensor, inv_t: float, chunk_size: int, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(logprobs, lse, entropy | None), each (N,) in the accumulation dtype."""
    N, dt = hidden.shape[0], acc_dtype(hidden.dtype)
    logp = hidden.new_empty(N, dtype=dt)
    lse = hidden.new_empty(N, dtype=dt)
    ent = hidden.new_empty(N, dtype=dt) if with_entropy else None
    for a in range(0, N, chunk_size):
        b = min(a + chunk_size, N)
        hs = hidden[a:b].to(dt) * inv_t  # (n, H)
        lse_c, ent_c = chunk_stats(hs, weight, with_entropy)
        lse[a:b] = lse_c
        logp[a:b] = target_logits(hs, weight, targets[a:b]) - lse_c
        if with_entropy:
            ent[a:b] = ent_c
    return logp, lse, ent


class ChunkedLogprobEntropy(torch.autograd.Function):
    """Chunked logprob(/entropy) with a recomputing backward; saves only (lse, entropy) per token."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, with_entropy):
        inv_t = 1.0 / temperature
        logp, lse, ent = forward_chunks(hidden, weight, targets, inv_t, chunk_size, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse, ent if with_entropy else lse.new_empty(0))
        ctx.inv_t, ctx.chunk_size, ctx.with_entropy = inv_t, chunk_size, with_entropy
        ctx.set_materialize_grads(False)  # an unused entropy output arrives as None: skip its term
        # Outputs stay in the accumulation dtype (fp32 for bf16 inputs): the ratio exp(logp - old) of
        # the policy loss is too sensitive for bf16 log-probs.
        if with_entropy:
            return logp, ent
        return logp

    @staticmethod
    def backward(ctx, g_lp, g_ent=None):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_lp is None and g_ent is None:
            return None, None, None, None, None, None
        dt = lse.dtype
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(dt)
        g_ent = None if g_ent is None else g_ent.to(dt)
        dh = torch.zeros(hidden.shape, dtype=dt, device=hidden.device) if need_h else None  # (N, H)
        dw = torch.zeros(weight.shape, dtype=dt, device=weight.device) if need_w else None  # (V, H)
        for a in range(0, hidden.shape[0], ctx.chunk_size):
            b = min(a + ctx.chunk_size, hidden.shape[0])
            hs = hidden[a:b].to(dt) * ctx.inv_t
            ge = None if g_ent is None else g_ent[a:b]
            dh_c = dh[a:b] if need_h else None
            chunk_grad(hs, weight, lse[a:b], ent[a:b] if ge is not None else None, g_lp[a:b], ge, dh_c, dw)
            add_onehot_grad(hs, weight, targets[a:b], g_lp[a:b], dh_c, dw)
        if need_h:
            dh = dh.mul_(ctx.inv_t).to(hidden.dtype)  # dL/dh = dz W / T
        if need_w:
            dw = dw.to(weight.dtype)  # a no-op for fp32 weights: no second (V, H) buffer
        return dh, dw, None, None, None, None


def default_chunk_size(num_tokens: int) -> int:
    return max(1, min(num_tokens, CHUNK_TOKENS))


def token_logprobs_entropy_torch(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Torch twin of `rl.ops.token_logprobs_entropy`: logprobs (N,) and entropy (N,) | None."""
    check_inputs(hidden, weight, targets, temperature)
    chunk = default_chunk_size(hidden.shape[0]) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = ChunkedLogprobEntropy.apply(hidden, weight, targets, float(temperature), chunk, bool(with_entropy))
    if with_entropy:
        return out[0], out[1]
    return out, None
