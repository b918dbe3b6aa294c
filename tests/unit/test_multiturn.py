"""Multi-turn tool-use rollouts (rollout/multiturn.py) on the real HF engine, with a model that calls a tool
(tests/tool_model.py) and real sandboxed tool workers (rollout.tool_runner.ToolRunner).

Token in, token out: the engine's second turn is fed exactly the prompt, the first turn's tokens and the
observation's tokens; the trajectory is exactly the sampled tokens plus the tool tokens, the tool tokens masked.
The logprob check compares the decode loop's logprobs with one full forward of the same fp32 weights over the
finished trajectory: the same products summed in another order (KV-cache decode vs whole-sequence attention), a
few ulps of O(10) logits, so 1e-4 absolute, as the engine contract (tests/engine_contract.py).
"""

from __future__ import annotations

import time

import pytest
import torch

from rollout.engine import SamplingParams
from rollout.multiturn import ToolSettings, generate_multiturn
from rollout.tool_runner import ToolRunner
from rollout.tools import resolve_tools
from tests.tool_model import PROBLEMS, build_tool_model, prompt

CALCULATORS = {  # tools the model calls by the name it was trained on, each broken in its own way
    "hangs": 'import time\n\ndef calculator(expression: str) -> str:\n    """Hangs."""\n    time.sleep(3600)\n'
             '    return "never"\n',
    "raises": 'def calculator(expression: str) -> str:\n    """Raises."""\n    raise RuntimeError("the backend is down")\n',
    "takes_int": 'def calculator(expression: int) -> str:\n    """Takes an integer; the model writes 2+3."""\n'
                 '    return str(expression)\n',
}


def _calculator(tmp_path, kind):
    path = tmp_path / f"{kind}.py"
    path.write_text(CALCULATORS[kind])
    return resolve_tools([f"{path}:calculator"])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from rollout.hf_engine import HFEngine

    return HFEngine(build_tool_model(tmp_path_factory.mktemp("tool_model")), dtype="float32")


@pytest.fixture(scope="module")
def calculator_runner():
    tools = resolve_tools(["calculator"])
    runner = ToolRunner(tools, timeout_s=10, num_workers=2, sandbox="off")
    yield tools, runner
    runner.close()


class Spy:
    """The real engine, with every generate() call's prompts and outputs recorded (the same RolloutEngine)."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.calls = engine, engine.tokenizer, []

    def generate(self, prompts, params):
        outs = self.engine.generate(prompts, params)
        self.calls.append(([list(p) for p in prompts], params, outs))
        return outs


def _prompts(tok):
    return [tok(prompt(e), add_special_tokens=False)["input_ids"] for e, _ in PROBLEMS]


@pytest.mark.parametrize("params", [SamplingParams(n=1, greedy=True, max_new_tokens=80),
                                    SamplingParams(n=2, max_new_tokens=80, seed=3)], ids=["greedy", "sampled"])
def test_trajectory_is_the_sampled_tokens_plus_the_tool_tokens(engine, calculator_runner, params):
    tools, runner = calculator_runner
    tok, spy = engine.tokenizer, Spy(engine)
    prompts = _prompts(tok)
    trajs = generate_multiturn(spy, prompts, params, ToolSettings(tools, fmt="tag"), runner)
    assert len(trajs) == len(prompts) * params.n
    assert spy.calls[0][1].stop == ["</calculator>"] and spy.calls[0][1].n == params.n
    called = [t for t in trajs if t.calls]
    assert called, "the tool model calls the calculator"
    turn2_prompts, turn2_params, turn2_outs = spy.calls[1]
    assert turn2_params.n == 1
    for k, t in enumerate(called):
        first = spy.calls[0][2][trajs.index(t)]
        call = t.calls[0]
        expr, value = PROBLEMS[t.prompt_index]
        assert (call["name"], call["arguments"], call["observation"], call["status"]) == (
            "calculator", {"expression": expr}, value, "ok")
        obs = tok(f"<result>{value}</result>", add_special_tokens=False)["input_ids"]
        # the second turn was fed the prompt, the first turn's tokens as sampled and the observation's tokens
        fed = prompts[t.prompt_index] + first.response_ids + obs
        j = turn2_prompts.index(fed)
        second = turn2_outs[j]
        assert t.response_ids == first.response_ids + obs + second.response_ids
        assert t.mask == [True] * len(first.response_ids) + [False] * len(obs) + [True] * len(second.response_ids)
        assert (call["start"], call["end"]) == (len(first.response_ids), len(first.response_ids) + len(obs))
        assert t.logprobs == first.logprobs + [0.0] * len(obs) + second.logprobs
        assert (t.turns, t.ended, t.finish_reason) == (2, "answer", "stop")
        if not params.greedy:  # sampled tokens' logprobs: those of the weights over the whole trajectory
            scored = torch.tensor(engine.score([prompts[t.prompt_index]], [t.response_ids], 1.0)[0])
            m = torch.tensor(t.mask)
            assert torch.allclose(scored[m], torch.tensor(t.logprobs)[m], atol=1e-4)


def test_a_seeded_rollout_repeats_turn_by_turn(engine, calculator_runner):
    tools, runner = calculator_runner
    params = SamplingParams(n=3, max_new_tokens=80, seed=11)
    a, b = (generate_multiturn(engine, _prompts(engine.tokenizer), params, ToolSettings(tools, fmt="tag"), runner)
            for _ in range(2))
    assert [(t.response_ids, t.mask, t.calls) for t in a] == [(t.response_ids, t.mask, t.calls) for t in b]


def test_the_budget_covers_tool_tokens_and_cuts_an_observation_that_does_not_fit(engine, calculator_runner):
    tools, runner = calculator_runner
    tok = engine.tokenizer
    call_len = len(tok("<calculator>2+3</calculator>", add_special_tokens=False)["input_ids"])
    budget = call_len + 4  # the observation <result>5</result> is 17 tokens: only 4 fit
    (t,) = generate_multiturn(engine, _prompts(tok)[:1], SamplingParams(greedy=True, max_new_tokens=budget),
                              ToolSettings(tools, fmt="tag"), runner)
    assert len(t.response_ids) == budget and t.mask == [True] * call_len + [False] * 4
    assert (t.finish_reason, t.ended, t.calls[0]["end"]) == ("length", "length", budget)


def test_a_call_on_the_last_turn_is_not_run_and_the_trajectory_is_truncated(engine, calculator_runner):
    tools, runner = calculator_runner
    before = dict(runner.counts)
    (t,) = generate_multiturn(engine, _prompts(engine.tokenizer)[:1], SamplingParams(greedy=True, max_new_tokens=80),
                              ToolSettings(tools, fmt="tag", max_turns=1), runner)
    assert (t.finish_reason, t.ended, t.turns, t.calls) == ("length", "max_turns", 1, [])
    assert all(t.mask) and runner.counts == before


def test_a_hung_tool_is_stopped_at_its_deadline_and_the_model_reads_an_error(engine, tmp_path):
    tools = _calculator(tmp_path, "hangs")
    with ToolRunner(tools, timeout_s=1.0, num_workers=1, sandbox="off") as runner:
        t0 = time.monotonic()
        trajs = generate_multiturn(engine, _prompts(engine.tokenizer), SamplingParams(greedy=True, max_new_tokens=200),
                                   ToolSettings(tools, fmt="tag"), runner)
        took = time.monotonic() - t0
    for t in trajs:
        call = t.calls[0]
        assert call["status"] == "timeout" and call["observation"].startswith("error: calculator ran past its 1 s")
        assert t.turns >= 2  # the model went on after the error observation
    assert took < 30, f"a 1 s tool deadline held the step for {took:.0f} s"


def test_a_raising_tool_and_an_unparseable_call_give_error_observations(engine, tmp_path):
    params = SamplingParams(greedy=True, max_new_tokens=200)  # room for the error text (one token a character)
    prompts = _prompts(engine.tokenizer)[:1]
    tools = _calculator(tmp_path, "raises")
    with ToolRunner(tools, timeout_s=10, num_workers=1, sandbox="off") as runner:
        (t,) = generate_multiturn(engine, prompts, params, ToolSettings(tools, fmt="tag"), runner)
    assert t.calls[0]["status"] == "error" and "the backend is down" in t.calls[0]["observation"]
    tools = _calculator(tmp_path, "takes_int")
    with ToolRunner(tools, timeout_s=10, num_workers=1, sandbox="off") as runner:
        (t,) = generate_multiturn(engine, prompts, params, ToolSettings(tools, fmt="tag"), runner)
        assert runner.counts["calls"] == 0  # refused before it reached a worker
    call = t.calls[0]
    assert (call["status"], call["arguments"]) == ("error", None)
    assert call["observation"].startswith("error: ") and "integer" in call["observation"]


def test_rollout_worker_samples_carry_the_mask_the_calls_and_the_strata(engine, tmp_path):
    from launch.schema_algorithm import AdvantageConfig, AlgorithmConfig
    from rl import steps
    from rl.advantages import strata_from_samples
    from rl.types import PromptRequest
    from rollout.worker import RolloutWorker

    model = engine.model.name_or_path
    worker = RolloutWorker("hf", model, engine_kwargs={"dtype": "float32"},
                           tools={"specs": ["calculator"], "format": "tag", "max_turns": 3, "timeout_s": 10,
                                  "workers": 1, "sandbox": "off"})
    try:
        tok = worker.tokenizer
        requests = [PromptRequest(k, 10 + k, ids, prompt(e), {"answer": v}) for k, ((e, v), ids) in
                    enumerate(zip(PROBLEMS, _prompts(tok)))]
        samples = worker.generate(requests, SamplingParams(n=4, max_new_tokens=80, seed=5))
        assert worker.tool_counts()["calls"] == sum(len(s.tool_calls) for s in samples)
    finally:
        worker.close_tools()
    for s in samples:
        assert s.tool_calls is not None and len(s.response_mask) == len(s.response_ids)
        assert s.num_trained_tokens == len(s.response_ids) - sum(c["end"] - c["start"] for c in s.tool_calls)
        assert s.response_text == tok.decode(s.response_ids, skip_special_tokens=True)  # observations included
        row = steps.reward_row(s)
        assert row["tool_calls"] == s.tool_calls and row["completion"] == s.response_text
        record = steps.sample_record(s)
        assert record["turns"] == s.turns and record["tool_calls"] == s.tool_calls
        s.reward, s.reward_status = float(s.response_text.endswith(s.fields["answer"])), "ok"
    strata = strata_from_samples(samples, "tool_calls")
    assert strata.tolist() == [len(s.tool_calls) for s in samples]
    m = steps.rollout_metrics(samples)
    n_calls = sum(len(s.tool_calls) for s in samples)
    assert m["rollout/tool_calls_mean"] == n_calls / len(samples)
    assert m["rollout/tool_call_rate"] == sum(bool(s.tool_calls) for s in samples) / len(samples)
    assert sum(m[f"rollout/tool_calls/{k}/count"] for k in set(strata.tolist())) == len(samples)
    alg = AlgorithmConfig(advantage=AdvantageConfig(name="stratified", strata_source="tool_calls"))
    steps.assign_advantages(samples, alg)
    assert all(s.advantage is not None for s in samples)
    from launch.eval_report import group_stats

    stats = group_stats([], samples, k=4, uses_acc=False, resamples=10, level=0.9, seed=0)
    assert stats["tools"]["sampled"]["tool_calls_mean"] == m["rollout/tool_calls_mean"]
    assert "greedy" not in stats["tools"]


def test_vllm_context_leaves_room_for_the_largest_budget_a_later_turn_asks(tmp_path):
    from launch.cluster import max_model_len
    from launch.config import load_config

    plain = load_config("configs/debug_cpu.yaml", [f"trainer.output_dir={tmp_path}"])
    tools = load_config("configs/debug_cpu.yaml", [f"trainer.output_dir={tmp_path}", "rollout.tools=[calculator]"])
    assert max_model_len(plain) == plain.data.max_prompt_tokens + plain.rollout.max_new_tokens
    assert max_model_len(tools) == tools.data.max_prompt_tokens + 2 * tools.rollout.max_new_tokens


def test_launch_eval_runs_tool_rollouts_and_writes_the_trajectories(engine, tmp_path):
    import json

    from launch import eval as launch_eval

    data = tmp_path / "calc.jsonl"
    data.write_text("".join(json.dumps({"prompt": prompt(e), "answer": v}) + "\n" for e, v in PROBLEMS))
    out = tmp_path / "eval"
    assert launch_eval.main([engine.model.name_or_path, str(data), "data.chat_template=false", "reward.fns=[arith]",
                             "reward.sandbox=off", "reward.processes_per_worker=1", "rollout.tools=[calculator]",
                             "rollout.tool_format=tag", "rollout.tool_instructions=null", "rollout.tool_workers=1",
                             "rollout.max_new_tokens=96", "model.dtype=float32", "eval.k=2", "eval.bootstrap=50",
                             f"eval.output={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["tools"]["greedy"]["tool_call_rate"] == 1.0
    written = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(written) == 2 + 4
    greedy = [r for r in written if r["mode"] == "greedy"]
    assert all(r["correct"] and r["turns"] == 2 and r["tool_calls"][0]["status"] == "ok" for r in greedy)
