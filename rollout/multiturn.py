"""Multi-turn tool-use rollouts over any `RolloutEngine`, token in, token out.

A trajectory is the prompt followed by turns: the model generates until it writes a tool call (generation stops at
the call's closing string, `rollout.tools.stop_strings`), the call runs in the sandboxed `ToolRunner`, its
observation is appended as tokens, and the model continues from there, until it answers without a call, runs out of
its token budget, or has used `max_turns` turns.

Token in, token out: each later turn is generated from the exact token ids so far (the prompt, every sampled token as
the engine returned it, every observation token), never from re-tokenised text, so the sequence the trainer scores
is the sampled tokens plus the tool tokens, in the order they were produced. Only the observation's text is
tokenised (alone, `add_special_tokens=False`), once. The observation tokens carry mask False: context for the later
turns, never a loss term, never counted in the token-mean, and their rollout logprob is a placeholder (0.0).

The budget, `SamplingParams.max_new_tokens`, covers the whole response (sampled and tool tokens). A turn cut by it, or
an observation that does not fit, ends the trajectory as "length" (truncated). A trajectory whose last allowed turn
still ends in a call also ends as "length": it never reached its answer.

The loop is engine-agnostic: it calls `engine.generate` once per turn for all live trajectories (later turns
with n=1, each trajectory its own prompt), so it runs on the HF engine and on vLLM alike. With a seed, turn t
samples with seed + 1_000_003·t: a seeded rollout is reproducible turn by turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rollout.engine import RolloutEngine, SamplingParams
from rollout.tool_runner import ToolResult, ToolRunner
from rollout.tools import Tool, ToolCallError, parse_call, stop_strings

TURN_SEED_STRIDE = 1_000_003


@dataclass
class Trajectory:
    prompt_index: int
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    """True for a sampled token, False for a tool-observation token."""
    finish_reason: str = "stop"
    turns: int = 0
    ended: str = "answer"
    """"answer" (a turn without a call), "length" (the token budget) or "max_turns" (a call on the last turn)."""
    calls: list[dict[str, Any]] = field(default_factory=list)
    """One record per call: turn, name, arguments (as the model wrote them, the spec's bound ones not among
    them; None for a call that could not be parsed), observation, status, and the observation's token span
    [start, end) in response_ids."""

    @property
    def has_tool_tokens(self) -> bool:
        return not all(self.mask)


@dataclass(frozen=True)
class ToolSettings:
    tools: list[Tool]
    fmt: str = "json"
    max_turns: int = 4
    response_template: str | None = None
    """The text around an observation, with "{observation}" in it (None: the format's, RESPONSE_TEMPLATES)."""

    def template(self) -> str:
        from rollout.tools import RESPONSE_TEMPLATES

        return self.response_template if self.response_template is not None else RESPONSE_TEMPLATES[self.fmt]


def generate_multiturn(engine: RolloutEngine, prompts: list[list[int]], params: SamplingParams,
                       settings: ToolSettings, runner: ToolRunner) -> list[Trajectory]:
    """`params.n` trajectories per prompt, prompt-major (as `engine.generate`)."""
    tok = engine.tokenizer
    template = settings.template()
    stops = list(params.stop) + [s for s in stop_strings(settings.fmt, settings.tools) if s not in params.stop]
    budget = params.max_new_tokens
    trajs: list[Trajectory] = []
    live: list[int] = []
    for turn in range(1, settings.max_turns + 1):
        if turn == 1:
            outs = engine.generate(prompts, replace(params, stop=stops))
            trajs = [Trajectory(prompt_index=o.prompt_index) for o in outs]
            live = list(range(len(trajs)))
        else:
            room = {i: budget - len(trajs[i].response_ids) for i in live}
            seed = None if params.seed is None else params.seed + TURN_SEED_STRIDE * (turn - 1)
            outs = engine.generate([prompts[trajs[i].prompt_index] + trajs[i].response_ids for i in live],
                                   replace(params, n=1, stop=stops, seed=seed, max_new_tokens=max(room.values())))
        pending: list[tuple[int, Any]] = []  # (trajectory, ToolCall or ToolCallError)
        for i, out in zip(live, outs):
            t = trajs[i]
            ids, lps, reason = list(out.response_ids), list(out.logprobs), out.finish_reason
            room_i = budget - len(t.response_ids)
            if len(ids) > room_i:  # later turns share one max_new_tokens: each is cut to its own budget
                ids, lps, reason = ids[:room_i], lps[:room_i], "length"
            t.response_ids += ids
            t.logprobs += lps
            t.mask += [True] * len(ids)
            t.turns = turn
            if reason == "length" or len(t.response_ids) >= budget:
                t.finish_reason, t.ended = "length", "length"
                continue
            try:
                call = parse_call(tok.decode(ids, skip_special_tokens=False), settings.fmt, settings.tools)
            except ToolCallError as e:
                call = e
            if call is None:
                t.finish_reason, t.ended = "stop", "answer"
                continue
            if turn == settings.max_turns:
                t.finish_reason, t.ended = "length", "max_turns"
                continue
            pending.append((i, call))
        if not pending:
            break
        runnable = [c for _, c in pending if not isinstance(c, ToolCallError)]
        results = iter(runner.run(runnable) if runnable else [])
        live = []
        for i, call in pending:
            res = ToolResult(f"error: {call}", "error") if isinstance(call, ToolCallError) else next(results)
            t = trajs[i]
            obs = tok.encode(template.format(observation=res.text), add_special_tokens=False)
            start = len(t.response_ids)
            room_i = budget - start
            fits = len(obs) < room_i  # at least one token left for the model after it
            obs = obs if fits else obs[:room_i]
            t.response_ids += obs
            t.logprobs += [0.0] * len(obs)
            t.mask += [False] * len(obs)
            t.calls.append({"turn": t.turns, "name": getattr(call, "name", None),
                            "arguments": None if isinstance(call, ToolCallError) else dict(call.arguments),
                            "observation": res.text, "status": res.status, "start": start,
                            "end": len(t.response_ids)})
            if fits:
                live.append(i)
            else:
                t.finish_reason, t.ended = "length", "length"
        if not live:
            break
    return trajs

