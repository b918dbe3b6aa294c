"""Which floating-point format a model computes in, from `model.dtype` and the device.

`auto` means bf16 wherever it is the fast format: on GPUs (bf16 weights and DeepSpeed's bf16 mode,
fp32 master weights and optimizer state), and on CPUs whose matrix units multiply bf16 natively (Intel
AMX-BF16). Elsewhere on a CPU `auto` is fp32. That includes CPUs with only the AVX512-BF16 dot-product
instructions: on one such Xeon (2 threads, torch 2.13) bf16 GEMMs of this model's shapes ran at 0.6-1.0x
fp32, so bf16 would round the activations and buy nothing; `benchmarks/cpu_levers.py --only gemm` measures
it on any CPU (docs/benchmarks.md, "End-to-end speed").
`bfloat16` or `float32` force either.

On a CPU, bf16 is *autocast* compute over fp32 parameters: the trainer keeps fp32 master weights,
gradients and Adam state and runs the transformer body under `torch.autocast("cpu", bfloat16)`; the
LM head, the logprobs and the loss stay fp32 (the fused op gets the fp32 hidden state and weight).
The HF rollout engine does the same (fp32 weights, body under autocast, fp32 head), so engine and
trainer round the same products the same way and the logprob gap between them stays small.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles with bf16 (torch's probe, else the kernel's cpuinfo flags)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    return "amx_bf16" in _cpu_flags()


def cpu_has_avx512_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    return "avx512_bf16" in _cpu_flags()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass(frozen=True)
class Precision:
    """`params`: the dtype the weights are stored in; `compute`: the dtype the body's matmuls run in;
    `autocast`: compute differs from params and is reached through torch.autocast on `device_type`."""

    params: torch.dtype
    compute: torch.dtype
    device_type: str

    @property
    def autocast(self) -> bool:
        return self.compute != self.params

    def body(self):
        """Context for the transformer body's forward: bf16 autocast on a CPU in bf16 mode, else nothing."""
        if not self.autocast:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute)

    @property
    def name(self) -> str:
        mode = " (autocast over float32 weights)" if self.autocast else ""
        return f"{str(self.compute).removeprefix('torch.')}{mode}"


def resolve(dtype: str, device_type: str) -> Precision:
    """The precision of `model.dtype` on a "cuda" or "cpu" device (ConfigError-style ValueError otherwise)."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if device_type == "cuda":
        if dtype in ("auto", "bfloat16"):
            return Precision(torch.bfloat16, torch.bfloat16, "cuda")
        return Precision(getattr(torch, dtype), getattr(torch, dtype), "cuda")
    if dtype == "float16":
        raise ValueError("model.dtype=float16 on a CPU: CPUs have no fast float16 path here and training would "
                         "need loss scaling; use model.dtype=bfloat16 or float32 (or auto)")
    bf16 = dtype == "bfloat16" or (dtype == "auto" and cpu_has_amx_bf16())
    return Precision(torch.float32, torch.bfloat16 if bf16 else torch.float32, device_type)
