"""GPU tests: vLLM's process settings, which must be in place before anything in the process touches CUDA.

- VLLM_WORKER_MULTIPROC_METHOD=spawn: pytest has initialised CUDA by the time an engine starts its
  workers, and a forked child cannot use the parent's CUDA context.
- PYTORCH_NVML_BASED_CUDA_CHECK=1: `torch.cuda.is_available()` (called by every module here at import)
  asks NVML instead of creating a CUDA context, so a later fork stays possible.
Set at collection, before any test module imports; both only affect vLLM and the CUDA check, and a value
the user exported wins.
"""

from __future__ import annotations

import os

for _key, _value in (("VLLM_WORKER_MULTIPROC_METHOD", "spawn"), ("PYTORCH_NVML_BASED_CUDA_CHECK", "1")):
    os.environ.setdefault(_key, _value)
