"""Triton kernels of the fused linear -> logprob/entropy op (docs/fused_ops.md, "The math"). CUDA only.

Imported lazily by rl/ops/logprob.py (which holds the launch code, the autograd wrapper and the
dispatch), so that CPU machines never import Triton. Not runnable here: it is exercised by
tests/gpu/test_ops_gpu.py against the torch twin in rl/ops/reference.py.

- `stats_fwd_kernel`: grid (token blocks, vocab splits). Each program streams its vocab range in
  BLOCK_V tiles; a tile of logits z = h W^T / T is a K-loop of tl.dot over H (fp32 accumulator), and
  updates the online-softmax state of its BLOCK_N tokens: running max M, S = Σ e^(z-M),
  B = Σ e^(z-M) (z-M). Partial (M, S, B) per split are combined on the host (a few (splits, N) ops).
- `dlogits_kernel`: grid (token blocks, vocab tiles). Recomputes one logits tile and writes
  dL/d(hW^T) = (g_l (onehot_y - p) - g_H p (z - lse + H)) / T into a (chunk, V) buffer; the two GEMMs
  dh = dlogits @ W and dW += dlogits^T @ h are left to cuBLAS (rl/ops/logprob.py).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_mask, v_mask, H, stride_hn, stride_hh, stride_wv, stride_wh,
                 inv_t, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 INPUT_PRECISION: tl.constexpr):
    """(BLOCK_N, BLOCK_V) fp32 tile of h @ W^T / T; out-of-range rows/columns load zeros."""
    offs_k = tl.arange(0, BLOCK_H)
    # int64 row offsets: V * H and N * V exceed 2^31 for large vocabularies and hidden sizes.
    h_rows = h_ptr + offs_n[:, None].to(tl.int64) * stride_hn
    w_rows = w_ptr + offs_v[:, None].to(tl.int64) * stride_wv
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k_mask = (k0 + offs_k) < H
        h = tl.load(h_rows + (k0 + offs_k)[None, :] * stride_hh, mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_rows + (k0 + offs_k)[None, :] * stride_wh, mask=v_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_V)
    return acc * inv_t


@triton.jit
def stats_fwd_kernel(h_ptr, w_ptr, m_ptr, s_ptr, b_ptr, N, V, H, v_per_split,
                     stride_hn, stride_hh, stride_wv, stride_wh, inv_t,
                     WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                     BLOCK_H: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    v_begin = pid_s * v_per_split
    v_end = tl.minimum(v_begin + v_per_split, V)
    m_i = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    s_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    b_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_mask = offs_v < v_end
        z = _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_mask, v_mask, H, stride_hn, stride_hh, stride_wv,
                         stride_wh, inv_t, BLOCK_N, BLOCK_V, BLOCK_H, INPUT_PRECISION)
        z = tl.where(v_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))  # finite: every tile has >= 1 valid column
        # First tile: m_i = -inf; use delta = 0 there so that delta * s_i is 0, not -inf * 0 = nan.
        delta = tl.where(m_i == float("-inf"), 0.0, m_i - m_new)
        alpha = tl.exp(delta)
        d = z - m_new[:, None]  # (BLOCK_N, BLOCK_V) <= 0, -inf at padded columns
        e = tl.exp(d)
        if WITH_ENTROPY:
            b_t = tl.sum(tl.where(v_mask[None, :], e * d, 0.0), axis=1)
            b_i = alpha * (b_i + delta * s_i) + b_t
        s_i = alpha * s_i + tl.sum(e, axis=1)
        m_i = m_new
    out = pid_s * N + offs_n
    tl.store(m_ptr + out, m_i, mask=n_mask)
    tl.store(s_ptr + out, s_i, mask=n_mask)
    if WITH_ENTROPY:
        tl.store(b_ptr + out, b_i, mask=n_mask)


@triton.jit
def dlogits_kernel(h_ptr, w_ptr, y_ptr, lse_ptr, ent_ptr, gl_ptr, ge_ptr, dz_ptr, N, V, H,
                   stride_hn, stride_hh, stride_wv, stride_wh, stride_dn, inv_t,
                   WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                   BLOCK_H: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    # Token blocks vary fastest so that programs running together share one W tile in L2.
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    n_mask = offs_n < N
    v_mask = offs_v < V
    z = _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_mask, v_mask, H, stride_hn, stride_hh, stride_wv,
                     stride_wh, inv_t, BLOCK_N, BLOCK_V, BLOCK_H, INPUT_PRECISION)
    lse = tl.load(lse_ptr + offs_n, mask=n_mask, other=0.0)
    g_l = tl.load(gl_ptr + offs_n, mask=n_mask, other=0.0)
    y = tl.load(y_ptr + offs_n, mask=n_mask, other=-1)
    zc = z - lse[:, None]  # log p
    p = tl.exp(zc)
    if WITH_ENTROPY:
        ent = tl.load(ent_ptr + offs_n, mask=n_mask, other=0.0)
        g_e = tl.load(ge_ptr + offs_n, mask=n_mask, other=0.0)
        # dH/dz = -p (log p + H)
        dz = -p * (g_l[:, None] + g_e[:, None] * (zc + ent[:, None]))
    else:
        dz = -p * g_l[:, None]
    dz = tl.where(offs_v[None, :] == y[:, None], dz + g_l[:, None], dz)
    dz = dz * inv_t  # chain rule through z = hW^T / T
    out = dz_ptr + offs_n[:, None].to(tl.int64) * stride_dn + offs_v[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=n_mask[:, None] & v_mask[None, :])
