"""The `code` verifier's assert tests, split without a sandbox: which sub-expressions become probes, what the
child is sent (never an expected value), what cannot be decided and why, and the strict encoding of probe
values (exact builtins only, no method of the candidate's ever called) with its decoder."""

from __future__ import annotations

import json
import math

import pytest

from reward.code_asserts import OpaqueValue, UndecidableTest, decide, decode_results, plan_assert_test
from reward.code_child import ENCODE_MAX_DEPTH, ENCODE_MAX_NODES, RESULTS_PREFIX, encode_result


def _probes(plan) -> list[str]:
    return [source for step in plan.child_steps for source in step["probes"]]


def _line(values) -> bytes:
    return f"noise printed by the solution\n{RESULTS_PREFIX}{json.dumps([encode_result(v) for v in values])}\n".encode()


def _verdict(test: str, *values, solution: str = "") -> bool:
    plan = plan_assert_test(test, solution)
    results = decode_results(_line(values), plan.num_probes)
    assert results is not None
    return decide(plan, results)


@pytest.mark.parametrize("test, probes", [
    ("assert f(1) == 2", ["f(1)"]),
    ("assert f(x=[1, 2])[0] == 1", ["f(x=[1, 2])[0]"]),  # the whole chain: the candidate's indexing runs there
    ("assert Solution().solve(3) == 4", ["Solution().solve(3)"]),
    ("import math\nassert math.isclose(f(2), 1.5, rel_tol=1e-9)", ["f(2)"]),  # the test's math, not the candidate's
    ("assert abs(f(1) - g(2)) < 1e-6 and sorted(h()) == [1]", ["f(1)", "g(2)", "h()"]),
    ("assert f(1) in (2, 3) or f(2) is None", ["f(1)", "f(2)"]),
    ("res = f(3)\nassert res == 9", ["f(3)", "res"]),  # bound by candidate code: read back from the child
    ("assert [f(1) for _ in range(2)] == [2, 2]", ["f(1)"]),  # no comprehension variable used
    ("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 4, candidate(9)\ncheck(add)",
     ["add(1)", "add(2)"]),  # HumanEval: inlined, the message dropped
])
def test_probes_are_the_outermost_candidate_chains(test, probes):
    assert _probes(plan_assert_test(test, "")) == probes


def test_the_child_gets_the_inputs_a_probe_needs_and_no_expected_value():
    test = "import math\nx = [3, 1, 2]\nwant = [1, 2, 3]\nMETA = {'k': 987654321}\nassert f(x) == want\n"
    plan = plan_assert_test(test, "def f(x): return sorted(x)")
    assert plan.child_steps == ({"probes": [], "then": "x = [3, 1, 2]"}, {"probes": ["f(x)"], "then": None})
    sent = json.dumps(plan.child_steps)
    assert "want" not in sent and "987654321" not in sent and "assert" not in sent


def test_a_variable_handed_to_the_candidate_is_read_back_and_a_rebinding_is_the_tests_again():
    plan = plan_assert_test("lst = [3, 1]\nsort_in_place(lst)\nassert lst == [1, 3]\nlst = [5]\nassert lst == [5]", "")
    assert _probes(plan) == ["sort_in_place(lst)", "lst"]  # the second `lst` is the test's own again


def test_a_builtin_the_solution_rebinds_is_the_candidates():
    assert _probes(plan_assert_test("assert sorted([2, 1]) == [1, 2]", "def sorted(x):\n    return x")) == ["sorted([2, 1])"]
    assert _probes(plan_assert_test("assert sorted(f()) == [1, 2]", "def f(): return [2, 1]")) == ["f()"]


@pytest.mark.parametrize("test, reason", [
    ("for i in range(3):\n    assert f(i) == i", r"line 1: a `for` statement"),
    ("assert all(f(i) == i for i in range(3))", r"`f\(i\)` uses i, a variable of the comprehension"),
    ("def t():\n    return f(1) == 2\nassert t()", r"the test's `t` uses f, which the test does not define"),
    ("from math import *\nassert f(1) == 2", r"import the names the test uses by name"),
    ("d = {}\nd['k'] = f(1)\nassert d['k'] == 2", r"assignment to `d\['k'\]`"),
    ("assert (y := f(1)) == 2", r"`:=` in a test"),
    ("x = f(1)", r"no assert statement"),
    ("assert __probe__[0]", r"reserves"),
    ("assert f(1) ==", r"does not parse"),
    ("def check(candidate):\n    for x in [1]:\n        assert candidate(x) == x\ncheck(f)", r"line 2: a `for` statement"),
])
def test_what_cannot_be_split_is_undecided_with_the_reason(test, reason):
    with pytest.raises(UndecidableTest, match=reason):
        plan_assert_test(test, "")


def test_the_verdict_is_computed_here_from_the_decoded_values():
    assert _verdict("assert f(1) == 2", 2)
    assert not _verdict("assert f(1) == 2", 3)
    assert _verdict("import math\nassert math.isclose(f(1), 1.5)", 1.5 + 1e-12)
    assert _verdict("assert f(1) is None and not f(2)", None, [])
    assert not _verdict("assert f(1) == (1, 2)", [1, 2])  # the type survives the trip
    assert _verdict("assert f(1) is None or f(1)[0] == 1", None, ValueError)  # short-circuit: never looked at
    assert _verdict("res = f(3)\nassert res == 9", 9, 9)


def test_a_value_that_was_not_encoded_fails_every_comparison():
    opaque = {"opaque": "a Yes object"}
    plan = plan_assert_test("assert f(1) == 42", "")
    [value] = decode_results(f"{RESULTS_PREFIX}{json.dumps([opaque])}".encode(), 1)
    assert isinstance(value, OpaqueValue) and not decide(plan, [value])
    for test in ("assert f(1) != 42", "assert f(1)", "assert not f(1)", "assert f(1) in [42]", "assert {f(1)}"):
        assert not decide(plan_assert_test(test, ""), [value]), test
    assert decide(plan_assert_test("obj = Solution()\nassert obj.solve(1) == 2", ""), [value, 2])


def test_a_probe_that_raised_fails_its_statement_even_under_except_exception():
    raised = {"raised": "ZeroDivisionError"}
    test = "def safe(x):\n    try:\n        return x()\n    except Exception:\n        return 42\nassert safe(lambda: f(1)) == 42"
    plan = plan_assert_test(test, "")
    assert not decide(plan, decode_results(f"{RESULTS_PREFIX}{json.dumps([raised])}".encode(), 1))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -(10 ** 300), 1.5, -0.0, math.inf, "é\x00\udc80", b"\x00\xff", 1 + 2j,
    [1, [2, (3,)]], (), {1, "a"}, frozenset({(1, 2)}), {"a": 1, (1, 2): {3: None}, 4.5: b""},
])
def test_exact_builtins_round_trip_with_their_types(value):
    [back] = decode_results(_line([value]), 1)
    assert back == value and type(back) is type(value) and repr(back) == repr(value)
    [nan] = decode_results(_line([math.nan]), 1)
    assert math.isnan(nan)


class Loud:
    """Every method the encoder might be tempted to call raises."""

    def __eq__(self, other):
        raise AssertionError("__eq__ called")

    def __hash__(self):
        raise AssertionError("__hash__ called")

    def __repr__(self):
        raise AssertionError("__repr__ called")

    def __iter__(self):
        raise AssertionError("__iter__ called")


class LoudInt(int):
    __eq__, __hash__, __repr__ = Loud.__eq__, Loud.__hash__, Loud.__repr__


class LoudList(list):
    __iter__, __repr__ = Loud.__iter__, Loud.__repr__


@pytest.mark.parametrize("value, what", [
    (Loud(), "a Loud object"), (LoudInt(3), "a LoudInt object"), (LoudList([1]), "a LoudList object"),
    ([1, Loud()], "a Loud object"), ({"k": LoudInt(1)}, "a LoudInt object"), (str, "a type object"),
], ids=["object", "int-subclass", "list-subclass", "inside-list", "dict-value", "class"])  # ids: repr() would raise
def test_the_encoder_refuses_anything_but_exact_builtins_without_calling_it(value, what):
    assert encode_result(value) == {"opaque": what}


def test_the_encoder_caps_depth_size_and_digits():
    loop: list = []
    loop.append(loop)
    deep: list = []
    for _ in range(ENCODE_MAX_DEPTH + 1):
        deep = [deep]
    for value in (loop, deep, [0] * (ENCODE_MAX_NODES + 1)):
        assert "over the caps" in encode_result(value)["opaque"]
    assert "could not be encoded (ValueError)" in encode_result(10 ** 5000)["opaque"]


@pytest.mark.parametrize("stdout", [
    b"", b"4\n", f"{RESULTS_PREFIX}[]".encode(),  # missing, no line, too few results
    f'{RESULTS_PREFIX}[{{"value": ["int", "1"]}}, {{"value": ["int", "2"]}}]'.encode(),  # too many
    f'{RESULTS_PREFIX}[{{"value": ["set", [["list", []]]]}}]'.encode(),  # an unhashable set element
    f'{RESULTS_PREFIX}[{{"value": ["object", "x"]}}]'.encode(), f'{RESULTS_PREFIX}[["int", "1"]]'.encode(),
    f'{RESULTS_PREFIX}[{{"value": {"[" * 5000}]'.encode(),
    f'{RESULTS_PREFIX}[{{"value": ["int", "1"]}}]\nprinted after the result'.encode(),
])
def test_a_missing_or_malformed_result_line_decodes_to_none(stdout):
    assert decode_results(stdout, 1) is None
