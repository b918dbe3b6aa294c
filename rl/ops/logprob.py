"""Fused linear -> per-token log-prob and entropy, straight from final hidden states (docs/fused_ops.md).

    logprobs, entropy = token_logprobs_entropy(hidden, lm_head.weight, targets, temperature=0.7)  # (N,), (N,)
    logprobs, _ = token_logprobs_entropy(hidden, weight, targets, with_entropy=False)  # no entropy work

The (N, V) logits are never materialised. Two implementations with one signature:
- "triton": CUDA kernels in rl/ops/_logprob_triton.py (imported lazily; Triton is optional). Forward
  = one pass over the vocabulary with an online softmax (per-token max, Σexp, Σ e·(z - max)), fp32
  accumulation, vocab splits for occupancy; backward recomputes logits tiles into a bounded
  (chunk, V) dlogits buffer and leaves the two GEMMs to cuBLAS.
- "torch": the chunked autograd.Function in rl/ops/reference.py (the CPU path and the oracle).
impl="auto" picks "triton" for CUDA tensors when Triton imports, "torch" otherwise.

Outputs are in the accumulation dtype (fp32 for bf16/fp16/fp32 inputs, fp64 for fp64): the policy
loss exponentiates logprob differences, and bf16 log-probs would put ~1% noise on the ratio.
Gradients w.r.t. hidden and weight come back in their own dtypes. Targets must lie in [0, V).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

from rl.ops.reference import check_inputs, target_logits, token_logprobs_entropy_torch

IMPLS = ("auto", "torch", "triton")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # tl.dot has no fp64

# Kernel tiles: 64 tokens x 128 vocab rows x 64 hidden per tl.dot step, an fp32 accumulator of 32 KB
# per program. Starting points for H100/A100; retune with benchmarks/fused_logprob.py on the GPU.
BLOCK_N, BLOCK_V, BLOCK_H = 64, 128, 64
NUM_WARPS, NUM_STAGES = 8, 3
DLOGITS_BUDGET_BYTES = 1 << 30
"""Upper bound of the backward's (chunk, V) dlogits buffer (bf16: ~3.5k tokens at V=151936)."""


@functools.lru_cache(maxsize=1)
def _kernels() -> ModuleType | None:
    try:
        from rl.ops import _logprob_triton
    except Exception:  # ImportError on CPU-only installs; anything else means an unusable Triton
        return None
    return _logprob_triton


def triton_available() -> bool:
    return _kernels() is not None


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """"auto" -> "triton" for CUDA tensors of a tl.dot dtype with Triton importable, else "torch";
    explicit choices are checked."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: use one of {', '.join(IMPLS)}")
    kernel_ok = device.type == "cuda" and dtype in KERNEL_DTYPES and triton_available()
    if impl == "triton" and not kernel_ok:
        raise RuntimeError(
            f"impl='triton' needs CUDA tensors of dtype {'/'.join(str(d) for d in KERNEL_DTYPES)} and an importable "
            f"triton (got device {device}, {dtype}, triton {'available' if triton_available() else 'not importable'}); "
            "use impl='auto' or 'torch'"
        )
    if impl == "auto":
        return "triton" if kernel_ok else "torch"
    return impl


# --------------------------------------------------------------------------- Triton launch code


def _operands(hidden: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Common dtype and unit stride along H (coalesced loads); no copy when already so."""
    dt = torch.promote_types(hidden.dtype, weight.dtype)
    return hidden.to(dt).contiguous(), weight.to(dt).contiguous()


def _precision() -> str:
    # fp32 operands follow torch's TF32 switch; bf16/fp16 ignore it (tensor cores, fp32 accumulation).
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def triton_stats(
    h: Tensor, w: Tensor, targets: Tensor, inv_t: float, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(logprobs, lse, entropy | None), each (N,) fp32, for operands prepared by `_operands`."""
    kern = _kernels()
    N, H = h.shape
    V = w.shape[0]
    if N == 0:  # e.g. an all-masked micro-batch: no launch with an empty grid
        empty = h.new_zeros(0, dtype=torch.float32)
        return empty, empty, (empty if with_entropy else None)
    n_blocks = triton_cdiv(N, BLOCK_N)
    v_tiles = triton_cdiv(V, BLOCK_V)
    # Split the vocabulary when there are too few token blocks to fill the GPU (short micro-batches).
    sms = torch.cuda.get_device_properties(h.device).multi_processor_count
    splits = max(1, min(v_tiles, triton_cdiv(2 * sms, n_blocks)))
    v_per_split = triton_cdiv(v_tiles, splits) * BLOCK_V
    splits = triton_cdiv(V, v_per_split)  # no empty split
    m = torch.empty((splits, N), dtype=torch.float32, device=h.device)
    s = torch.empty_like(m)
    b = torch.empty_like(m) if with_entropy else m  # placeholder pointer, never written
    kern.stats_fwd_kernel[(n_blocks, splits)](
        h, w, m, s, b, N, V, H, v_per_split, h.stride(0), h.stride(1), w.stride(0), w.stride(1), inv_t,
        WITH_ENTROPY=with_entropy, BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H,
        INPUT_PRECISION=_precision(), num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    M = m.amax(dim=0)  # (N,) combine the splits' online-softmax states
    alpha = torch.exp(m - M)  # (splits, N)
    S = (alpha * s).sum(dim=0)
    lse = M + S.log()
    ent = None
    if with_entropy:
        B = (alpha * (b + (m - M) * s)).sum(dim=0)
        ent = S.log() - B / S
    logp = target_logits(h.float() * inv_t, w, targets) - lse
    return logp, lse, ent


def triton_grads(
    h: Tensor, w: Tensor, targets: Tensor, lse: Tensor, ent: Tensor | None, g_lp: Tensor,
    g_ent: Tensor | None, inv_t: float, need_h: bool, need_w: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """dL/dh (N, H) and dL/dW (V, H) in the operands' dtype, from per-token upstream grads (fp32)."""
    kern = _kernels()
    N, H = h.shape
    V = w.shape[0]
    chunk = max(BLOCK_N, min(N, DLOGITS_BUDGET_BYTES // (V * h.element_size())) // BLOCK_N * BLOCK_N)
    dz = torch.empty((min(chunk, N), V), dtype=h.dtype, device=h.device)  # (chunk, V), reused per chunk
    dh = torch.empty((N, H), dtype=h.dtype, device=h.device) if need_h else None
    dw = torch.zeros((V, H), dtype=w.dtype, device=w.device) if need_w and N == 0 else (
        torch.empty((V, H), dtype=w.dtype, device=w.device) if need_w else None)
    with_ent = g_ent is not None
    targets = targets.contiguous()
    lse, g_lp = lse.float().contiguous(), g_lp.float().contiguous()
    ent_arg = ent.float().contiguous() if with_ent else lse
    ge_arg = g_ent.float().contiguous() if with_ent else g_lp
    for a in range(0, N, chunk):
        b = min(a + chunk, N)
        n = b - a
        h_c, d_c = h[a:b], dz[:n]
        kern.dlogits_kernel[(triton_cdiv(n, BLOCK_N), triton_cdiv(V, BLOCK_V))](
            h_c, w, targets[a:b], lse[a:b], ent_arg[a:b], g_lp[a:b], ge_arg[a:b], d_c, n, V, H,
            h_c.stride(0), h_c.stride(1), w.stride(0), w.stride(1), d_c.stride(0), inv_t,
            WITH_ENTROPY=with_ent, BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H,
            INPUT_PRECISION=_precision(), num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
        if need_h:
            torch.mm(d_c, w, out=dh[a:b])  # (n, V) @ (V, H)
        if need_w:
            # cuBLAS accumulates in fp32 inside each GEMM; across chunks the sum is rounded to the
            # weight dtype once per chunk (one chunk for N*V*2 bytes <= DLOGITS_BUDGET_BYTES).
            if a == 0:
                torch.mm(d_c.t(), h_c, out=dw)  # (V, n) @ (n, H)
            else:
                dw.addmm_(d_c.t(), h_c)
    return dh, dw


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class TritonLogprobEntropy(torch.autograd.Function):
    """Kernel forward (per-token lse / entropy) and kernel backward (recomputed dlogits + cuBLAS)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy):
        h, w = _operands(hidden, weight)
        inv_t = 1.0 / temperature
        logp, lse, ent = triton_stats(h, w, targets, inv_t, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse, ent if with_entropy else lse.new_empty(0))
        ctx.inv_t, ctx.with_entropy = inv_t, with_entropy
        ctx.set_materialize_grads(False)  # an unused entropy output arrives as None: skip its term
        return (logp, ent) if with_entropy else logp

    @staticmethod
    def backward(ctx, g_lp, g_ent=None):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        if g_lp is None and g_ent is None:
            return None, None, None, None, None
        h, w = _operands(hidden, weight)
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp
        dh, dw = triton_grads(h, w, targets, lse, ent if g_ent is not None else None, g_lp, g_ent, ctx.inv_t,
                              ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        dh = None if dh is None else dh.to(hidden.dtype)
        dw = None if dw is None else dw.to(weight.dtype)
        return dh, dw, None, None, None


def token_logprobs_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = True,
    impl: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """log softmax(hidden @ weight.T / temperature)[targets] and the softmax entropy, per token.

    hidden (N, H), weight (V, H) (the LM head; may be tied to the input embedding), targets (N,) long.
    Returns logprobs (N,) and entropy (N,) or None when with_entropy=False, in fp32 (fp64 for fp64
    inputs), differentiable w.r.t. hidden and weight. chunk_size = tokens per chunk of the torch path
    (None: reference.CHUNK_TOKENS); the Triton path bounds its memory on its own and ignores it.
    """
    check_inputs(hidden, weight, targets, temperature)
    if resolve_impl(impl, hidden.device, torch.promote_types(hidden.dtype, weight.dtype)) == "torch":
        return token_logprobs_entropy_torch(
            hidden, weight, targets, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
        )
    out = TritonLogprobEntropy.apply(hidden, weight, targets, float(temperature), bool(with_entropy))
    return (out[0], out[1]) if with_entropy else (out, None)
