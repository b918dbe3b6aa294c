"""A sample's correctness comes from one reward function's `acc`, never from the weighted reward."""

from __future__ import annotations

import pytest

from launch.config import ConfigError, load_config
from launch.prepare import check_rewards
from reward.metrics import combine
from reward.registry import RewardSpecError, resolve_specs
from reward.types import CallOutcome, coerce_output
from rl.steps import accuracy
from rl.types import Sample


def _scored(specs, completion: str, answer: str) -> Sample:
    """A sample scored in-process by the real built-ins, its metrics exactly as the reward package names them."""
    fns = resolve_specs(specs)
    row = {"prompt": "q", "completion": completion, "answer": answer}
    result = combine(fns, [CallOutcome("ok", *coerce_output(fn(row))) for fn in fns])
    s = Sample(0, 0, [1], [2], [-1.0], "stop", 0, reward=result.reward, reward_metrics=result.metrics)
    return s, tuple(fn.name for fn in fns)


def test_well_formatted_wrong_answer_is_wrong():
    s, names = _scored(["math", "format"], "<think>2+2=5</think>\n<answer>5</answer>", answer="4")
    assert s.reward == 1.0  # the format reward alone makes the weighted reward positive ...
    assert accuracy(s, names, None) == 0.0  # ... but the answer is wrong


def test_code_partial_pass_is_not_solved():
    program = "```python\ndef add(a, b):\n    return a + b\n```"
    fns = resolve_specs(["code"])
    reward, metrics, _ = coerce_output(fns[0]({"prompt": "q", "completion": program,
                                                "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]}))
    assert reward == 0.5 and metrics["acc"] == 0.0


def test_several_reporters_need_accuracy_fn():
    s, names = _scored(["math", "arith"], "The answer is 4", answer="4")
    with pytest.raises(RuntimeError, match="reward.accuracy_fn"):
        accuracy(s, names, None)
    assert accuracy(s, names, "arith") == 1.0
    with pytest.raises(ConfigError, match="set reward.accuracy_fn"):  # caught at start-up, before any model
        check_rewards(load_config(None, ["reward.fns=[math,arith]"]))
    assert check_rewards(load_config(None, ["reward.fns=[math,arith]", "reward.accuracy_fn=math"])) == ("math", "arith")
    with pytest.raises(ConfigError, match="reward.accuracy_fn=mth: not one of"):
        check_rewards(load_config(None, ["reward.fns=[math,arith]", "reward.accuracy_fn=mth"]))


def test_no_reporter_means_no_accuracy():
    s = Sample(0, 0, [1], [2], [-1.0], "stop", 0, reward=1.0, reward_metrics={"mine": 1.0})
    assert accuracy(s, ("mine",), None) is None


def test_dapo_math_scores_plus_minus_one():
    right, _ = _scored(["dapo_math"], r"\boxed{4}", answer="4")
    wrong, _ = _scored(["dapo_math"], "five", answer="4")
    assert (right.reward, wrong.reward) == (1.0, -1.0)
    assert (accuracy(right, ("dapo_math",), None), accuracy(wrong, ("dapo_math",), None)) == (1.0, 0.0)


@pytest.mark.parametrize("name", ["acc", "kl", "overlong_penalty"])
def test_driver_metric_names_are_reserved(name):
    with pytest.raises(RewardSpecError, match="not usable as a metric name"):
        resolve_specs([{"fn": "math", "name": name}])


def test_warns_when_clipping_cannot_act():
    from launch.prepare import startup_warnings

    assert any("never act" in w for w in startup_warnings(load_config("configs/quickstart.yaml")))
    assert not startup_warnings(load_config("configs/dapo.yaml"))  # 16 updates per rollout step
    assert not startup_warnings(load_config("configs/quickstart.yaml", ["algorithm.replay.enable=true"]))


def test_reports_acc_lists_exactly_the_builtins_that_report_it():
    """The start-up check trusts REPORTS_ACC: it must match what each built-in really returns."""
    from reward.registry import BUILTINS, REPORTS_ACC
    from reward.types import coerce_output

    row = {"prompt": "q", "completion": "```python\nprint(2)\n```", "answer": "2",
           "tests": [{"input": "", "output": "2\n"}]}
    local = sorted(set(BUILTINS) - {"remote"})  # remote reports whatever its server returns (tests/unit/test_remote_reward.py)
    reporting = {name for fn in resolve_specs(local)
                 for name in [fn.name] if "acc" in coerce_output(fn(row))[1]}
    assert reporting == REPORTS_ACC
