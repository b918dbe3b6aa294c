"""Built-in verifiers: their doctests, and worked examples at the edges of answer extraction."""

from __future__ import annotations

import doctest
import json

import pytest

import reward.code
import reward.code_asserts
import reward.metrics
import reward.types
import reward.verifiers
from reward.code import code_reward, parse_tests
from reward.verifiers import arith_reward, extract_answer, format_reward, math_reward


@pytest.mark.parametrize("module", [reward.verifiers, reward.types, reward.metrics, reward.code,
                                    reward.code_asserts])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        (r"so $\boxed{\dfrac{1}{2}}$", "0.5", 1.0),  # \dfrac and decimals are the same number
        (r"\boxed{x = 3}", "3", 1.0),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "Natalia ... #### 72", 1.0),  # GSM8K gold
        ("The total is $1,000.", "1000", 1.0),
        (r"\boxed{5} but wait, the answer is 6", "6", 0.0),  # \boxed wins over the last number
        (r"\boxed{\frac{1}{2", "0.5", 0.0),  # cut-off box: no answer, and no guess from inside it
        ("", "1", 0.0),
    ],
)
def test_math_reward_examples(completion, answer, expected):
    assert math_reward("q", completion, answer=answer)["reward"] == expected


def test_extract_answer_order():
    assert extract_answer("#### 4 and later \\boxed{5}") == "5"
    assert extract_answer("2 + 2 = 4\n####  4.\n") == "4"
    assert extract_answer("no answer", last_number=False) is None


@pytest.mark.parametrize(
    "completion, answer, expected",
    [("1 + 2 + 3 = 6", "6", 1.0), ("= -12", "-12", 1.0), ("6 apples", 6, 1.0), ("It is 6.", " 6 ", 1.0),
     ("12-7", "7", 1.0), ("60", "6", 0.0), ("6.0", "6", 0.0), ("", "6", 0.0)],
)
def test_arith_reward_is_exact_integer_match(completion, answer, expected):
    assert arith_reward("q", completion, answer=answer)["reward"] == expected


def test_format_reward_allows_multiline_thoughts():
    assert format_reward("q", "<think>\nline 1\nline 2\n</think>\n\n<answer>4</answer>\n") == 1.0
    assert format_reward("q", "<think>x</think>") == 0.0


def test_code_tests_column_forms():
    assert parse_tests("assert f() == 1") == [{"test": "assert f() == 1"}]
    assert parse_tests(json.dumps(["assert 1", "assert 2"])) == [{"test": "assert 1"}, {"test": "assert 2"}]
    assert parse_tests({"inputs": ["1\n"], "outputs": ["2\n"]}) == [{"input": "1\n", "output": "2\n"}]
    with pytest.raises(ValueError, match="non-empty list"):
        parse_tests([])
    with pytest.raises(ValueError, match="cannot read test"):
        parse_tests([42])


def test_code_reward_io_pairs_and_failures():
    program = "```python\nn = int(input())\nprint(n * 2)\n```"
    pairs = {"inputs": ["2\n", "5\n", "x\n"], "outputs": ["4\n", "10  \n\n", "0\n"]}  # 3rd crashes: failed
    out = code_reward("double it", program, tests=pairs)
    assert out == {"reward": pytest.approx(2 / 3), "acc": 0.0, "passed": 2.0, "num_tests": 3.0,
                   "undecided": 0.0}  # not solved
