"""Resolve reward specs to functions and check their signatures, at startup.

A spec names a function three ways:

    "math"                       a built-in (see BUILTINS)
    "my_pkg.rewards:exact"       an importable module and an attribute
    "path/to/rewards.py:exact"   a Python file (relative to the working directory) and an attribute

`RewardRunner` takes a list of specs, each a string or {"fn": spec, "weight": 1.0, "name": ...}.
Every function must take (prompt, completion) positionally and dataset columns by keyword:

    def my_reward(prompt: str, completion: str, *, answer: str, **sample) -> float | dict[str, float]

Errors say which spec is wrong, what is wrong and how to fix it, before any model is loaded.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from rl.registry import PluginError, is_file_spec, load_object

BUILTINS: dict[str, str] = {
    "math": "reward.verifiers:math_reward",
    "dapo_math": "reward.verifiers:dapo_math_reward",
    "arith": "reward.verifiers:arith_reward",
    "format": "reward.verifiers:format_reward",
    "code": "reward.code:code_reward",
}
"""Built-in name -> "module:function" (imported only when used)."""

REPORTS_ACC = frozenset({"math", "dapo_math", "arith", "code"})
"""Built-ins that report `acc` (a sample's correctness)."""
RESERVED_NAMES = frozenset({"mean", "std", "error_rate", "timeout_rate", "num_samples",
                            "acc", "kl", "overlong_penalty"})
"""Metric names under reward/ that a function name would collide with: the batch summaries, and the
per-sample values the driver adds (`acc` the sample's correctness, `kl` the KL-in-reward penalty,
`overlong_penalty` DAPO's length shaping)."""
_ROW_TEXT_KEYS = ("prompt", "completion")
_SPEC_KEYS = ("fn", "weight", "name")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SIGNATURE_HINT = "def my_reward(prompt: str, completion: str, *, answer: str, **sample) -> float | dict"


class RewardSpecError(ValueError):
    """A reward spec cannot be resolved or its function has the wrong shape."""


@dataclass
class RewardFn:
    """A resolved spec: the function, its weight and metric name, and how to call it with a row."""

    name: str
    spec: str
    weight: float
    fn: Callable[..., Any]
    params: frozenset[str]
    """Keyword parameters after (prompt, completion)."""
    required: frozenset[str]
    """Those without a default: the row must have these columns."""
    takes_var_kw: bool
    """Whether it has **sample (then it gets every column)."""

    def kwargs_for(self, row: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for one row: its dataset columns, by name."""
        fields = {k: v for k, v in row.items() if k not in _ROW_TEXT_KEYS}
        missing = self.required - fields.keys()
        if missing:
            raise KeyError(
                f"reward fn {self.name!r} ({self.spec}) needs column(s) {sorted(missing)} but the row has "
                f"{sorted(fields)}; add the column to the dataset or give the parameter a default"
            )
        if self.takes_var_kw:
            return fields
        return {k: v for k, v in fields.items() if k in self.params}

    def __call__(self, row: dict[str, Any]) -> Any:
        return self.fn(row["prompt"], row["completion"], **self.kwargs_for(row))


def load(spec: str) -> Callable[..., Any]:
    """The function a spec names, with its signature checked (RewardSpecError if not usable)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"reward spec {spec!r}: expected a non-empty string like 'math' or 'my_pkg.rewards:fn'")
    spec = spec.strip()
    if ":" not in spec:
        if spec not in BUILTINS:
            near = difflib.get_close_matches(spec, BUILTINS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise RewardSpecError(
                f"reward spec {spec!r}: unknown built-in; known: {sorted(BUILTINS)}{hint} "
                "(for your own function use 'pkg.module:fn' or 'path/to/file.py:fn')"
            )
        fn = _load_target(spec, BUILTINS[spec])
    else:
        fn = _load_target(spec, spec)
    _signature_info(fn, spec)
    return fn


def resolve_specs(specs: list[str | dict[str, Any]]) -> list[RewardFn]:
    """Resolve every spec (with weights and names); errors name the offending entry."""
    if isinstance(specs, (str, dict)):
        specs = [specs]
    if not specs:
        raise RewardSpecError("no reward functions given; pass e.g. ['math'] or [{'fn': 'math', 'weight': 1.0}]")
    fns: list[RewardFn] = []
    for i, entry in enumerate(specs):
        spec, weight, name = _parse_entry(i, entry)
        fn = load(spec)
        params, required, var_kw = _signature_info(fn, spec)
        name = name or _default_name(spec)
        if not _NAME_RE.match(name) or name in RESERVED_NAMES:
            raise RewardSpecError(
                f"reward spec #{i} ({spec}): name {name!r} is not usable as a metric name "
                f"(letters, digits, _ . - only; not one of {sorted(RESERVED_NAMES)}); set {{'name': ...}}"
            )
        if any(f.name == name for f in fns):
            raise RewardSpecError(
                f"reward spec #{i} ({spec}): a function named {name!r} is already listed; "
                f"give one of them a different {{'name': ...}}"
            )
        fns.append(RewardFn(name, spec, weight, fn, params, required, var_kw))
    return fns


def _parse_entry(i: int, entry: str | dict[str, Any]) -> tuple[str, float, str | None]:
    if isinstance(entry, str):
        return entry, 1.0, None
    if not isinstance(entry, dict) or "fn" not in entry:
        raise RewardSpecError(
            f"reward spec #{i} ({entry!r}): expected a string or a dict like {{'fn': 'math', 'weight': 1.0}}"
        )
    unknown = set(entry) - set(_SPEC_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        near = difflib.get_close_matches(key, _SPEC_KEYS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RewardSpecError(f"reward spec #{i} ({entry!r}): unknown key {key!r}; allowed: {list(_SPEC_KEYS)}{hint}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise RewardSpecError(f"reward spec #{i} ({entry['fn']}): weight must be a finite number, got {weight!r}")
    return entry["fn"], float(weight), entry.get("name")


def _default_name(spec: str) -> str:
    return spec.strip().rpartition(":")[2] if ":" in spec else spec.strip()


def _load_target(spec: str, target: str) -> Callable[..., Any]:
    try:
        return load_object(target, what="reward spec", shown=spec)
    except PluginError as exc:
        raise RewardSpecError(str(exc)) from exc


def _signature_info(fn: Callable[..., Any], spec: str) -> tuple[frozenset[str], frozenset[str], bool]:
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise RewardSpecError(
            f"reward spec {spec!r}: is a generator; it must return the reward. Expected: {_SIGNATURE_HINT}"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise RewardSpecError(f"reward spec {spec!r}: cannot read its signature ({exc})") from exc
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) < 2 and not has_var_pos:
        raise RewardSpecError(
            f"reward spec {spec!r}: signature {sig} does not take (prompt, completion) as its first two "
            f"arguments. Expected: {_SIGNATURE_HINT}"
        )
    rest = positional[2:] + [p for p in params if p.kind == p.KEYWORD_ONLY]
    bad = [p.name for p in rest if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    if bad:
        raise RewardSpecError(
            f"reward spec {spec!r}: parameter(s) {bad} are positional-only, but dataset columns are passed by "
            f"keyword. Expected: {_SIGNATURE_HINT}"
        )
    names = frozenset(p.name for p in rest if p.kind != p.POSITIONAL_ONLY)
    required = frozenset(p.name for p in rest if p.kind != p.POSITIONAL_ONLY and p.default is p.empty)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    return names, required, var_kw


def absolute_spec(spec: str) -> str:
    """The spec with a file path made absolute, so a process with another cwd resolves it alike."""
    where, sep, attr = spec.strip().rpartition(":")
    if sep and is_file_spec(where):
        return f"{os.path.abspath(where)}:{attr}"
    return spec.strip()
