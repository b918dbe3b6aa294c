"""Everything the driver checks and loads before it starts a worker.

Order matters for the user: cheap checks that can fail on a typo come first (reward specs, the
advantage estimator, data files and columns, the model path), so a bad run stops in seconds with a
one-line error, before any model is loaded. Then the model alias is materialised and the prompts are tokenised once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

from launch.config import Config, ConfigError
from launch.models import resolve_model
from rollout.data import encode_prompts, load_rows

log = logging.getLogger("rlvr")

# rendered-prompt bookkeeping that must not reach reward functions as dataset columns
_INTERNAL = ("prompt_ids", "prompt_text")


@dataclass
class Prepared:
    model_path: str
    train_rows: list[dict[str, Any]]
    """Each: {"prompt_ids", "prompt_text", "fields"} where fields is the dataset row."""
    eval_rows: list[dict[str, Any]]
    reward_names: tuple[str, ...] = ()
    """The metric name of each reward function (reward/<name>), in reward.fns order."""
    dropped_overlong: dict[str, int] = field(default_factory=dict)
    """Prompts dropped for length (data.filter_overlong_prompts), by split; logged at step 0."""


def check_rewards(cfg: Config) -> tuple[str, ...]:
    """Resolve every reward spec (signatures, names) and the accuracy function; returns the names."""
    import reward
    from reward.registry import REPORTS_ACC

    try:
        names = tuple(fn.name for fn in reward.resolve_specs(cfg.reward.specs()))
    except Exception as e:  # the reward package words its errors for users
        raise ConfigError(f"reward.fns: {e}") from None
    chosen = cfg.reward.accuracy_fn
    if chosen is not None and chosen not in names:
        raise ConfigError(f"reward.accuracy_fn={chosen}: not one of the reward functions {list(names)}; name the one "
                          "whose `acc` defines correctness")
    reporting = [n for n in names if n in REPORTS_ACC]
    if chosen is None and len(reporting) > 1:
        raise ConfigError(f"reward.fns: {reporting} all report `acc`; set reward.accuracy_fn to the one that defines "
                          "a correct answer")
    return names


def check_tools(cfg: Config) -> list:
    """rollout.tools resolved and checked (docstring, typed arguments, the format's needs) before any model loads;
    [] without tools. The rollout workers resolve them again in their own processes."""
    r = cfg.rollout
    if not r.tools:  # strata_source=tool_calls without tools: a reward function reports the count (checked per sample)
        return []
    from rollout.tools import ToolSpecError, check_tag_format, resolve_tools

    try:
        tools = resolve_tools(list(r.tools))
        if r.tool_format == "tag":
            check_tag_format(tools)
    except ToolSpecError as e:
        raise ConfigError(str(e)) from None
    return tools


def prompt_tools(cfg: Config, tokenizer, tools: list | None = None) -> Any:
    """How the prompts present rollout.tools to the model (rollout.tools.ToolPrompt, per rollout.tool_instructions);
    None without tools or with tool_instructions null. `tools`: check_tools(cfg), when the caller has it."""
    tools = check_tools(cfg) if tools is None else tools
    how = cfg.rollout.tool_instructions
    if not tools or how is None:
        return None
    from rollout.tools import ToolPrompt, tool_prompt

    return tool_prompt(tokenizer, cfg.rollout.tool_format, tools) if how == "auto" else ToolPrompt(None, how)


def startup_warnings(cfg: Config) -> list[str]:
    """Settings that are legal but cannot do what they are for; logged at start, never changed."""
    out = []
    t, alg = cfg.trainer, cfg.algorithm
    off_policy = alg.replay.enable or (alg.dynamic_sampling.enable and alg.dynamic_sampling.carry_surplus)
    if t.mini_batches * t.epochs == 1 and not off_policy:
        out.append("algorithm.loss: one update per step (trainer.mini_batches=1, trainer.epochs=1) and no off-policy "
                   "rows, so the importance ratio π/π_old is exactly 1 and the clip settings (eps_low, eps_high, "
                   "clip_ratio_c) never act: the update is a plain policy gradient. Raise trainer.mini_batches "
                   "(DAPO: 16 updates per rollout step) for PPO-style clipping")
    return out


def prepare(cfg: Config) -> Prepared:
    reward_names = check_rewards(cfg)
    tools = check_tools(cfg)
    try:  # a plug-in estimator is imported here: its signature and params are checked before any model loads
        cfg.algorithm.advantage_params()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    d = cfg.data
    kw = dict(prompt_key=d.prompt_key, answer_key=d.answer_key, arith=d.arith)
    eval_source = d.eval_source
    eval_raw = load_rows(eval_source, split="eval", **kw) if eval_source else []
    exclude = {r["prompt"] for r in eval_raw} if d.train == "arith" and eval_source == "arith" else None
    train_raw = load_rows(d.train, split="train", exclude=exclude, **kw)
    eval_raw = eval_raw[: d.eval_size]
    model_path = resolve_model(cfg.model.path, cfg.model.cache_dir)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    shown = prompt_tools(cfg, tokenizer, tools)
    train_rows = encode_rows(tokenizer, train_raw, d, d.train, shown)
    eval_rows = encode_rows(tokenizer, eval_raw, d, eval_source or "", shown)
    dropped = {"train": len(train_raw) - len(train_rows), "eval": len(eval_raw) - len(eval_rows)}
    probe_rewards(cfg, tokenizer, [("data.train", d.train, train_rows), ("data.eval", eval_source, eval_rows)])
    return Prepared(model_path, train_rows, eval_rows, reward_names,
                    {k: v for k, v in dropped.items() if d.filter_overlong_prompts})


def probe_rewards(cfg: Config, tokenizer, splits: list[tuple[str, Any, list[dict[str, Any]]]]) -> None:
    """Call every reward function once on a real row, in workers set up as in training (sandbox, limits,
    deadline), before any model loads: a function bound to the wrong arguments, needing a column the data
    lacks, or returning something that is not a reward fails here with its error, not after every sample
    of the first step. The row is the first (train, then eval) row whose data_source the function scores;
    the completion is the row's answer (or "0" without one). Also checks that every row's data_source is
    scored by some function. A sandbox level the workers cannot reach (reward.sandbox, a function's own
    `sandbox`) fails here, in seconds, with the workers' one-line refusal; the level in force is logged."""
    from reward import RewardRunner, resolve_specs
    from reward.registry import COMPLETION_IDS, SOURCE_PROMPT

    fns = resolve_specs(cfg.reward.specs())
    for key, source, rows in splits:
        seen = {str(r["fields"].get("data_source")) for r in rows}
        unscored = sorted(ds for ds in seen if not any(f.applies({"data_source": ds}) for f in fns))
        if unscored:
            raise ConfigError(f"reward.fns: no function scores the {key} rows with data_source {unscored}; add them "
                              "to a function's data_sources, or leave one function unrouted")
    probes: list[tuple[int, str, int, dict[str, Any]]] = []  # (fn index, split key, row index, reward row)
    for j, f in enumerate(fns):
        found = next(((key, source, i, r) for key, source, rows in splits for i, r in enumerate(rows)
                      if f.applies(r["fields"])), None)
        if found is None:
            continue  # routed to data sources that no row has: never called
        key, source, i, r = found
        completion = str(r["fields"].get("answer", "0"))
        probes.append((j, f"{key}={source} row {i}", j, {
            **r["fields"], "prompt": r["prompt_text"], "completion": completion,
            SOURCE_PROMPT: r["fields"].get("prompt", r["prompt_text"]),
            COMPLETION_IDS: tokenizer(completion, add_special_tokens=False)["input_ids"]}))
    if not probes:
        return
    rw = cfg.reward
    with tempfile.TemporaryDirectory(prefix="rlvr-probe-") as tmp:
        quarantine = os.path.join(tmp, "quarantine.jsonl")
        try:
            runner = RewardRunner(rw.specs(), rw.timeout_s, num_workers=1, quarantine_path=quarantine,
                                  sandbox=rw.sandbox, cgroup=rw.cgroup)
        except Exception as e:  # noqa: BLE001 - a worker that cannot import the functions: the user's to fix
            raise ConfigError(f"reward.fns: the reward workers could not start: {_last_line(str(e))}") from None
        log.info("reward sandbox level: %s (reward.sandbox=%s)", runner.sandbox_level, rw.sandbox)
        log.info("reward limits: %s (reward.cgroup=%s)", runner.limits_note, rw.cgroup)
        with runner:
            results = runner.score([row for _, _, _, row in probes])
        failed = {}
        if os.path.exists(quarantine):
            for line in open(quarantine):
                rec = json.loads(line)
                failed.setdefault(rec["fn"], rec)
    lines = []
    for (j, where, _, _), result in zip(probes, results):
        rec = failed.get(fns[j].name)
        if rec is None:
            continue
        origin = _user_frame(rec.get("traceback") or "")
        hint = ""
        if (fns[j].sandbox or rw.sandbox) in ("full", "userns") and "connect" in (rec.get("error") or "").lower():
            hint = "; a function that needs the network runs with {sandbox: off} in its reward.fns entry"
        lines.append(f"reward.fns: {fns[j].name} ({fns[j].spec}, {fns[j].api} convention) failed on {where}: "
                     f"{rec['status']}: {rec['error']}{origin}{hint}")
    if lines:
        raise ConfigError("\n".join(lines))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def _user_frame(tb: str) -> str:
    """`(at FILE:LINE)` of the innermost traceback frame outside this package, if any."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', tb)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = tuple(os.path.join(root, pkg) + os.sep for pkg in ("reward", "rl", "rollout", "launch"))
    for path, line in reversed(frames):
        if not os.path.abspath(path).startswith(ours) and "site-packages" not in path:
            return f" (at {path}:{line})"
    return ""


def encode_rows(tokenizer, raw: list[dict], data_cfg, source: Any, tools: Any = None) -> list[dict]:
    """Loaded rows rendered and tokenised (rollout.data.encode_prompts) as the driver keeps them: {"prompt_ids",
    "prompt_text", "fields"} (fields: the dataset row); `tools` (prompt_tools) presents rollout.tools."""
    encoded = encode_prompts(tokenizer, raw, data_cfg, source, tools)
    return [{"prompt_ids": r["prompt_ids"], "prompt_text": r["prompt_text"],
             "fields": {k: v for k, v in r.items() if k not in _INTERNAL}} for r in encoded]
