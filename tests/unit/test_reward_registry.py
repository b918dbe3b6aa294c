"""Reward spec resolution: the three spec forms, weights and names, and every error a user can hit."""

from __future__ import annotations

import textwrap

import pytest

from reward import BUILTINS, RewardSpecError, load, resolve_specs
from reward.registry import absolute_spec
from reward.verifiers import math_reward


def _write(path, body: str) -> None:
    path.write_text(textwrap.dedent(body))


def test_builtins_resolve_and_module_spec_names_the_same_function():
    for name in BUILTINS:
        assert callable(load(name))
    assert load("math") is math_reward
    assert load("reward.verifiers:math_reward") is math_reward


def test_file_spec_relative_to_cwd_and_loaded_once(tmp_path, monkeypatch):
    _write(tmp_path / "my_rewards.py", """
        def exact(prompt, completion, *, answer, **sample):
            return float(completion == answer)
    """)
    monkeypatch.chdir(tmp_path)
    fn = load("my_rewards.py:exact")
    assert fn("p", "4", answer="4") == 1.0
    assert load(str(tmp_path / "my_rewards.py") + ":exact") is fn
    assert absolute_spec("my_rewards.py:exact") == f"{tmp_path}/my_rewards.py:exact"
    assert absolute_spec("math") == "math"


def test_module_spec_from_sys_path(tmp_path, monkeypatch):
    pkg = tmp_path / "acme_rewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _write(pkg / "scorers.py", """
        async def judge(prompt, completion, **sample):
            return {"reward": 1.0, "stratum": "easy"}
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load("acme_rewards.scorers:judge").__name__ == "judge"


def test_unknown_builtin_lists_known_names_and_suggests_nearest():
    with pytest.raises(RewardSpecError) as err:
        load("maths")
    msg = str(err.value)
    assert "'maths'" in msg and "did you mean 'math'?" in msg
    assert all(name in msg for name in BUILTINS)


@pytest.mark.parametrize(
    "body, attr, fragment",
    [
        ("def f(completion):\n    return 1.0\n", "f", "first two arguments"),
        ("def f(prompt, completion, answer, /):\n    return 1.0\n", "f", "positional-only"),
        ("def f(prompt, completion):\n    yield 1.0\n", "f", "generator"),
        ("f = 3\n", "f", "not a function"),
        ("def score(prompt, completion):\n    return 1.0\n", "scor", "did you mean 'score'?"),
        ("raise RuntimeError('broken module')\n", "f", "importing"),
    ],
)
def test_bad_functions_are_rejected_with_the_spec_and_a_fix(tmp_path, body, attr, fragment):
    path = tmp_path / f"bad_{abs(hash(body))}.py"
    path.write_text(body)
    spec = f"{path}:{attr}"
    with pytest.raises(RewardSpecError) as err:
        load(spec)
    assert spec in str(err.value) and fragment in str(err.value)


def test_missing_file_and_module_errors_say_where_to_look(tmp_path):
    with pytest.raises(RewardSpecError, match="does not exist"):
        load(f"{tmp_path}/nope.py:f")
    with pytest.raises(RewardSpecError, match="cannot import module 'no_such_pkg.mod'"):
        load("no_such_pkg.mod:f")
    with pytest.raises(RewardSpecError, match="non-empty string"):
        load("")


def test_resolve_specs_weights_names_and_kwargs():
    fns = resolve_specs(["math", {"fn": "format", "weight": 0.25}, {"fn": "arith", "name": "exact_int"}])
    assert [(f.name, f.weight) for f in fns] == [("math", 1.0), ("format", 0.25), ("exact_int", 1.0)]
    math_fn = fns[0]
    assert math_fn.required == {"answer"} and math_fn.takes_var_kw
    row = {"prompt": "p", "completion": r"\boxed{2}", "answer": "2", "data_source": "toy"}
    assert math_fn.kwargs_for(row) == {"answer": "2", "data_source": "toy"}
    assert math_fn(row)["reward"] == 1.0
    with pytest.raises(KeyError, match=r"needs column\(s\) \['answer'\].*'data_source'"):
        math_fn.kwargs_for({"prompt": "p", "completion": "c", "data_source": "toy"})


def test_function_without_var_kw_only_gets_its_own_columns(tmp_path):
    _write(tmp_path / "narrow.py", """
        def only_answer(prompt, completion, answer="0"):
            return float(completion == answer)
    """)
    (fn,) = resolve_specs([f"{tmp_path}/narrow.py:only_answer"])
    assert fn.required == frozenset()
    assert fn.kwargs_for({"prompt": "", "completion": "", "answer": "1", "x": 2}) == {"answer": "1"}


@pytest.mark.parametrize(
    "specs, fragment",
    [
        ([], "no reward functions"),
        (["math", "math"], "already listed"),
        ([{"fn": "math", "wieght": 2.0}], "did you mean 'weight'?"),
        ([{"fn": "math", "weight": float("nan")}], "finite number"),
        ([{"fn": "math", "weight": True}], "finite number"),
        ([{"fn": "math", "name": "mean"}], "not usable as a metric name"),
        ([{"fn": "math", "name": "a/b"}], "not usable as a metric name"),
        ([{"weight": 1.0}], "expected a string or a dict"),
    ],
)
def test_resolve_specs_errors(specs, fragment):
    with pytest.raises(RewardSpecError, match=fragment.replace("?", r"\?")):
        resolve_specs(specs)
