"""Resolve reward specs to functions and check their signatures, at startup.

A spec names a function three ways:

    "math"                       a built-in (see BUILTINS)
    "my_pkg.rewards:exact"       an importable module and an attribute
    "path/to/rewards.py:exact"   a Python file (relative to the working directory) and an attribute

`RewardRunner` takes a list of specs, each a string or a dict of options:

    {"fn": spec, "name": "metric_name", "weight": 1.0, "timeout_s": 10, "sandbox": "full",
     "data_sources": ["gsm8k"], "api": "auto", "args": {"url": "http://judge:8000"}, "env": ["JUDGE_KEY"]}

`data_sources` routes the function to the rows whose `data_source` column is one of them (the
others skip it); `args` are keyword arguments bound to every call; `timeout_s` and `sandbox`
(a level: full, userns, rlimits or off; true/false mean full/off) override the runner's for this
function; `env` names environment variables its workers get besides the allowlist (reward/pool.py),
e.g. a judge's API key. A function object may carry `required_sandbox = "<level>"`: the weakest
level it runs at (the `code` verifier: userns); RewardRunner refuses to start it below that.

Four calling conventions are recognised by signature (`api: auto`), so a function written for
another system plugs in unchanged:

    native    def my_reward(prompt, completion, *, answer, **columns) -> float | dict
    verl      def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict
    trl       def reward_func(completions, **kwargs) -> list[float]   (or (prompts, completions, ...))
    openrlhf  def reward_func(queries, prompts, labels, **kwargs) -> tensor | list | dict

Batch conventions (trl, openrlhf) are called with batches of one sample: every sample is scored in
isolation under its own deadline, so one bad completion cannot fail its neighbours.

Errors say which spec is wrong, what is wrong and how to fix it, before any model is loaded.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from reward.sandbox import normalize_level
from reward.types import RewardValueError
from rl.registry import PluginError, is_file_spec, load_object

BUILTINS: dict[str, str] = {
    "math": "reward.verifiers:math_reward",
    "dapo_math": "reward.verifiers:dapo_math_reward",
    "arith": "reward.verifiers:arith_reward",
    "format": "reward.verifiers:format_reward",
    "code": "reward.code:code_reward",
    "remote": "reward.remote:remote_reward",
}
"""Built-in name -> "module:function" (imported only when used)."""

REPORTS_ACC = frozenset({"math", "dapo_math", "arith", "code"})
"""Built-ins that report `acc` (a sample's correctness)."""
RESERVED_NAMES = frozenset({"mean", "std", "error_rate", "timeout_rate", "num_samples",
                            "acc", "kl", "overlong_penalty"})
"""Metric names under reward/ that a function name would collide with: the batch summaries, and the
per-sample values the driver adds (`acc` the sample's correctness, `kl` the KL-in-reward penalty,
`overlong_penalty` DAPO's length shaping)."""
SOURCE_PROMPT = "_source_prompt"
"""Row key of the dataset's own prompt (text or chat messages), for the TRL convention's `prompts`."""
COMPLETION_IDS = "_completion_ids"
"""Row key of the completion's token ids (TRL's `completion_ids`)."""
_INTERNAL_KEYS = (SOURCE_PROMPT, COMPLETION_IDS)
_ROW_TEXT_KEYS = ("prompt", "completion", *_INTERNAL_KEYS)
_SPEC_KEYS = ("fn", "weight", "name", "timeout_s", "sandbox", "data_sources", "api", "args", "env", "isolation")
ISOLATIONS = ("call", "worker")
"""A function's `isolation`: each call in a process of its own forked from the worker's imported state
(`call`, the default: nothing one call plants reaches the next), or every call in the worker process itself
(`worker`: no fork per call, for functions that never run what they score; see docs/reward.md)."""
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
APIS = ("auto", "native", "verl", "trl", "openrlhf")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SIGNATURE_HINT = "def my_reward(prompt: str, completion: str, *, answer: str, **sample) -> float | dict"


class RewardSpecError(ValueError):
    """A reward spec cannot be resolved or its function has the wrong shape."""


@dataclass
class RewardFn:
    """A resolved spec: the function, its options, and how to call it with a row."""

    name: str
    spec: str
    weight: float
    fn: Callable[..., Any]
    params: frozenset[str]
    """Keyword parameters it takes besides the convention's own (native: after prompt, completion)."""
    required: frozenset[str]
    """Those without a default: the row must have these columns."""
    takes_var_kw: bool
    """Whether it has **kwargs (then it gets every column)."""
    api: str = "native"
    """Calling convention: native, verl, trl or openrlhf (see the module docstring)."""
    timeout_s: float | None = None
    """Per-call deadline of this function (None: the runner's)."""
    sandbox: str | None = None
    """Sandbox level of its workers: full, userns, rlimits or off (None: the runner's)."""
    data_sources: frozenset[str] | None = None
    """The `data_source` values it scores (None: every row)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments bound to every call."""
    accepts: frozenset[str] = frozenset()
    """Every parameter name of the function (a convention's own arguments are passed only if it takes them)."""
    env: tuple[str, ...] = ()
    """Environment variables its workers get besides the allowlist (reward/pool.py ENV_ALLOWLIST)."""
    isolation: str = "call"
    """`call`: each call runs in a fresh process forked from the worker; `worker`: in the worker (ISOLATIONS)."""

    @property
    def required_sandbox(self) -> str | None:
        """The weakest sandbox level the function runs at (its `required_sandbox` attribute), if it declares one."""
        return getattr(self.fn, "required_sandbox", None)

    def applies(self, row: dict[str, Any]) -> bool:
        return self.data_sources is None or str(row.get("data_source")) in self.data_sources

    def kwargs_for(self, row: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for one row: its dataset columns, by name, then the bound `args`."""
        fields = {k: v for k, v in row.items() if k not in _ROW_TEXT_KEYS}
        missing = self.required - fields.keys() - self.args.keys()
        if missing:
            raise KeyError(
                f"reward fn {self.name!r} ({self.spec}) needs column(s) {sorted(missing)} but the row has "
                f"{sorted(fields)}; add the column to the dataset, bind it with {{'args': ...}} or give the "
                "parameter a default"
            )
        if not self.takes_var_kw:
            fields = {k: v for k, v in fields.items() if k in self.params}
        return {**fields, **self.args}

    def __call__(self, row: dict[str, Any]) -> Any:
        """The function's output on one row, in the native form (a number or a dict with "reward")."""
        if self.api == "verl":
            return _from_verl(self._call_verl(row))
        if self.api == "trl":
            return _from_batch(self._call_trl(row), "a list with one reward per completion")
        if self.api == "openrlhf":
            columns = {k: [v] for k, v in self.kwargs_for(row).items() if k in self.params and k not in self.args}
            return _from_openrlhf(self.fn(*_openrlhf_args(row), **columns, **self.args))
        return self.fn(row["prompt"], row["completion"], **self.kwargs_for(row))

    def _call_verl(self, row: dict[str, Any]) -> Any:
        truth = row.get("reward_model", {}).get("ground_truth") if isinstance(row.get("reward_model"), dict) else None
        if truth is None:
            truth = row.get("answer")
        if truth is None:
            raise KeyError(f"reward fn {self.name!r} ({self.spec}) is a verl compute_score and needs a ground truth, "
                           "but the row has no `answer` nor `reward_model.ground_truth`; set data.answer_key")
        kw = {"data_source": row.get("data_source"), "solution_str": row["completion"], "ground_truth": truth,
              "extra_info": row.get("extra_info")}
        if not self.takes_var_kw:
            kw = {k: v for k, v in kw.items() if k in self.accepts}
        return self.fn(**kw, **self.args)

    def _call_trl(self, row: dict[str, Any]) -> Any:
        source = row.get(SOURCE_PROMPT, row["prompt"])
        conversational = isinstance(source, list)
        completion = [{"role": "assistant", "content": row["completion"]}] if conversational else row["completion"]
        kw = {"prompts": [source], "completions": [completion]}
        if COMPLETION_IDS in row:
            kw["completion_ids"] = [row[COMPLETION_IDS]]
        kw.update({k: [v] for k, v in self.kwargs_for(row).items() if k not in self.args})
        if not self.takes_var_kw:
            kw = {k: v for k, v in kw.items() if k in self.accepts}
        return self.fn(**kw, **self.args)


def _openrlhf_args(row: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
    """OpenRLHF's (queries, prompts, labels): full text, rendered prompt, the label (answer) column."""
    return [row["prompt"] + row["completion"]], [row["prompt"]], [row.get("answer")]


def _one(value: Any, what: str) -> Any:
    """The single element of a batch-of-one result (a list, tuple, tensor or array), or a scalar as is."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise RewardValueError(f"returned {len(value)} values for a batch of 1 sample; return {what}")
        return value[0]
    return value


def _from_batch(out: Any, what: str) -> Any:
    """A TRL function's reward for its one sample; None (TRL: not applicable to this sample) counts 0, as
    TRL's nansum over functions does."""
    if not isinstance(out, (list, tuple)) and not hasattr(out, "tolist"):
        raise RewardValueError(f"returned {type(out).__name__}, but a TRL-style reward function returns {what}")
    value = _one(out, what)
    return 0.0 if value is None else value


def _from_verl(out: Any) -> Any:
    """verl returns a number or a dict whose "score" is the reward (other numeric keys: metrics, e.g. acc)."""
    if isinstance(out, dict):
        if "score" not in out:
            raise RewardValueError(f"returned a dict without a 'score' key (keys: {sorted(map(str, out))}); a verl "
                                   "compute_score returns a number or a dict with 'score'")
        return {**{k: v for k, v in out.items() if k not in ("score", "reward")}, "reward": out["score"]}
    return out


def _from_openrlhf(out: Any) -> Any:
    """OpenRLHF returns rewards (tensor/list) or {"rewards", "scores", "extra_logs": {name: values}}."""
    what = "one reward per query"
    if isinstance(out, dict):
        if "rewards" not in out:
            raise RewardValueError(f"returned a dict without 'rewards' (keys: {sorted(map(str, out))}); an OpenRLHF "
                                   "reward_func returns rewards or {'rewards': ..., 'scores': ..., 'extra_logs': ...}")
        result = {"reward": _one(out["rewards"], what)}
        if out.get("scores") is not None:
            result["score"] = _one(out["scores"], what)
        for key, value in (out.get("extra_logs") or {}).items():
            result[str(key)] = _one(value, what)
        return result
    return _one(out, what)


def load(spec: str, api: str = "auto") -> Callable[..., Any]:
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
    _signature_info(fn, spec, api)
    return fn


def resolve_specs(specs: list[str | dict[str, Any]]) -> list[RewardFn]:
    """Resolve every spec (with its options); errors name the offending entry."""
    if isinstance(specs, (str, dict)):
        specs = [specs]
    if not specs:
        raise RewardSpecError("no reward functions given; pass e.g. ['math'] or [{'fn': 'math', 'weight': 1.0}]")
    fns: list[RewardFn] = []
    for i, entry in enumerate(specs):
        opts = _parse_entry(i, entry)
        spec = opts.pop("fn")
        fn = load(spec, opts["api"])
        api, params, required, var_kw = _signature_info(fn, spec, opts.pop("api"))
        name = opts.pop("name") or _default_name(spec)
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
        unknown_args = set(opts["args"]) - params if not var_kw else set()
        if unknown_args:
            raise RewardSpecError(f"reward spec #{i} ({spec}): args {sorted(unknown_args)} are not parameters of the "
                                  f"function (it takes {sorted(params)})")
        fns.append(RewardFn(name, spec, fn=fn, params=params, required=required, takes_var_kw=var_kw, api=api,
                            accepts=frozenset(inspect.signature(fn).parameters), **opts))
    return fns


def _parse_entry(i: int, entry: str | dict[str, Any]) -> dict[str, Any]:
    """The options of spec entry #i with defaults filled and types checked."""
    if isinstance(entry, str):
        entry = {"fn": entry}
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
    where = f"reward spec #{i} ({entry['fn']})"
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise RewardSpecError(f"{where}: weight must be a finite number, got {weight!r}")
    timeout = entry.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise RewardSpecError(f"{where}: timeout_s must be a positive number of seconds, got {timeout!r}")
    sandbox = entry.get("sandbox")
    if sandbox is not None:
        try:
            sandbox = normalize_level(sandbox, "sandbox")
        except ValueError as exc:
            raise RewardSpecError(f"{where}: {exc}") from None
    env = entry.get("env") or []
    if isinstance(env, str):
        env = [env]
    if not isinstance(env, (list, tuple)) or not all(isinstance(n, str) and _ENV_NAME_RE.match(n) for n in env):
        raise RewardSpecError(f"{where}: env must be a list of environment variable names, got {env!r}")
    sources = entry.get("data_sources")
    if sources is not None:
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, (list, tuple)) or not sources:
            raise RewardSpecError(f"{where}: data_sources must be a non-empty list of data_source values")
        sources = frozenset(map(str, sources))
    api = entry.get("api", "auto")
    if api not in APIS:
        raise RewardSpecError(f"{where}: api={api!r}; use one of {list(APIS)}")
    isolation = entry.get("isolation", "call")
    if isolation not in ISOLATIONS:
        raise RewardSpecError(f"{where}: isolation={isolation!r}; use call (a process per call, the default) "
                              "or worker (calls share the worker process)")
    args = entry.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise RewardSpecError(f"{where}: args must be a mapping of keyword arguments, got {args!r}")
    return {"fn": entry["fn"], "weight": float(weight), "name": entry.get("name"),
            "timeout_s": None if timeout is None else float(timeout), "sandbox": sandbox, "data_sources": sources,
            "api": api, "args": dict(args), "env": tuple(dict.fromkeys(env)), "isolation": isolation}


def spec_dict(fn: RewardFn) -> dict[str, Any]:
    """The spec entry that resolves to `fn` again (in a process with another working directory too)."""
    return {"fn": absolute_spec(fn.spec), "weight": fn.weight, "name": fn.name, "timeout_s": fn.timeout_s,
            "sandbox": fn.sandbox, "data_sources": None if fn.data_sources is None else sorted(fn.data_sources),
            "api": fn.api, "args": dict(fn.args), "env": list(fn.env), "isolation": fn.isolation}


def _default_name(spec: str) -> str:
    return spec.strip().rpartition(":")[2] if ":" in spec else spec.strip()


def _load_target(spec: str, target: str) -> Callable[..., Any]:
    try:
        return load_object(target, what="reward spec", shown=spec)
    except PluginError as exc:
        raise RewardSpecError(str(exc)) from exc


def detect_api(sig: inspect.Signature) -> str:
    """The calling convention a signature follows (see the module docstring)."""
    names = list(sig.parameters)
    positional = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if {"solution_str", "ground_truth"} <= set(names):
        return "verl"
    if positional[:3] == ["queries", "prompts", "labels"]:
        return "openrlhf"
    if "completions" in names:
        return "trl"
    return "native"


_CONVENTION_ARGS = {
    "verl": ("data_source", "solution_str", "ground_truth", "extra_info"),
    "trl": ("prompts", "completions", "completion_ids"),
    "openrlhf": ("queries", "prompts", "labels"),
}


def _signature_info(fn: Callable[..., Any], spec: str,
                    api: str = "auto") -> tuple[str, frozenset[str], frozenset[str], bool]:
    """(api, column parameters, required ones, has **kwargs) of `fn`, or RewardSpecError."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise RewardSpecError(
            f"reward spec {spec!r}: is a generator; it must return the reward. Expected: {_SIGNATURE_HINT}"
        )
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise RewardSpecError(f"reward spec {spec!r}: cannot read its signature ({exc})") from exc
    api = detect_api(sig) if api == "auto" else api
    params = list(sig.parameters.values())
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    if api != "native":
        own = _CONVENTION_ARGS[api]
        if api == "trl" and "completions" not in sig.parameters:
            raise RewardSpecError(f"reward spec {spec!r}: api=trl, but signature {sig} has no `completions`; TRL "
                                  "reward functions are f(completions, **kwargs) or f(prompts, completions, **kwargs)")
        if api == "openrlhf" and [p.name for p in params[:3]] != list(own):
            raise RewardSpecError(f"reward spec {spec!r}: api=openrlhf, but signature {sig} does not start with "
                                  "(queries, prompts, labels)")
        if api == "verl":
            missing = {"solution_str", "ground_truth"} - set(sig.parameters)
            if missing:
                raise RewardSpecError(f"reward spec {spec!r}: api=verl, but signature {sig} lacks {sorted(missing)}; "
                                      "verl calls compute_score(data_source, solution_str, ground_truth, extra_info)")
        rest = [p for p in params if p.name not in own and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        bad = [p.name for p in rest if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
        if bad:
            raise RewardSpecError(f"reward spec {spec!r}: parameter(s) {bad} are positional-only; {api} functions "
                                  "get their arguments by keyword")
        names = frozenset(p.name for p in rest)
        required = frozenset(p.name for p in rest if p.default is p.empty)
        if api == "verl" and required:
            raise RewardSpecError(f"reward spec {spec!r}: parameter(s) {sorted(required)} have no default, but verl "
                                  "passes only data_source, solution_str, ground_truth and extra_info; give them "
                                  "defaults or bind them with {'args': ...}")
        return api, names, required, var_kw
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) < 2 and not has_var_pos:
        raise RewardSpecError(
            f"reward spec {spec!r}: signature {sig} does not take (prompt, completion) as its first two arguments, "
            f"nor follows the verl, TRL or OpenRLHF conventions. Expected: {_SIGNATURE_HINT}"
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
    return api, names, required, var_kw


def absolute_spec(spec: str) -> str:
    """The spec with a file path made absolute, so a process with another cwd resolves it alike."""
    where, sep, attr = spec.strip().rpartition(":")
    if sep and is_file_spec(where):
        return f"{os.path.abspath(where)}:{attr}"
    return spec.strip()
