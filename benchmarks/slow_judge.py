"""A reward that takes `SECONDS` per sample, standing in for an LLM judge behind an API (benchmarks/async_modes.py).

The verdict is the built-in `arith` one (the last integer of the completion equals the answer); the wait is an
`asyncio.sleep`, so it holds a reward process for its length without using a core, as a request to a remote judge
does. Self-contained: under the `full` and `userns` sandboxes a reward file sees only itself and the standard
library.
"""

from __future__ import annotations

import asyncio
import re

SECONDS = 0.5
_INT = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")


async def judge(prompt: str, completion: str, *, answer, **sample) -> dict[str, float]:
    await asyncio.sleep(SECONDS)
    numbers = _INT.findall(completion)
    correct = bool(numbers) and "." not in numbers[-1] and int(numbers[-1]) == int(str(answer).strip())
    return {"reward": float(correct), "acc": float(correct)}
