r"""Built-in verifiers `math`, `arith` and `format` (the `code` verifier lives in reward/code.py).

Each is a plain reward function with the plug-in signature; the examples below run as doctests
(tests/unit/test_reward_builtins.py). They are deterministic and need no network.

- math:      the final answer of the completion (last \boxed{...}, else the text after the last
             "####", else the last number) is compared with the row's `answer` through math-verify
             (1/2 == 0.5 == \frac{1}{2}, sets, intervals, x=3 vs 3), under its own deadline.
- dapo_math: the same verdict scored as DAPO does (arXiv 2503.14476 §2.4): +1 correct, −1
             otherwise, so that the overlong penalty's floor of −1 means "as bad as a wrong answer".
- arith:     exact integer match: the last integer in the completion equals int(answer).
- format:    the completion is <think>...</think> followed by <answer>...</answer> and nothing else.

The correctness verifiers report `acc` (1.0 correct, 0.0 not): eval accuracy and dynamic sampling read
it, never the (weighted, shaped) reward. `format` checks form, not correctness, and reports no `acc`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from reward.types import time_left

MATH_VERIFY_TIMEOUT_S = 3
"""math-verify's own deadline (seconds, whole) for parsing and comparing one answer."""

_NUMBER_RE = re.compile(r"(?<![\d.])-?\d[\d,]*(?:\.\d+)?")
_INT_RE = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")
_FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def last_boxed(text: str) -> str | None:
    r"""Content of the last \boxed{...} (or \fbox{...}), braces balanced; None if there is none.

    >>> last_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> last_boxed("no box here") is None
    True
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1 : i].strip()
    return None  # unbalanced: the answer was cut off


def extract_answer(text: str, *, last_number: bool = True) -> str | None:
    r"""The final answer of a solution: last \boxed{}, else after the last "####", else the last number.

    >>> extract_answer(r"So $x = \boxed{\frac{3}{4}}$.")
    '\\frac{3}{4}'
    >>> extract_answer("She pays 3 + 4 = 7 dollars.\n#### 7")
    '7'
    >>> extract_answer("I think the total is 1,250 apples.")
    '1250'
    >>> extract_answer("no digits", last_number=True) is None
    True
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().splitlines()
        return _strip_number(tail[0]) if tail and tail[0].strip() else None
    if last_number:
        numbers = _NUMBER_RE.findall(text)
        return _strip_number(numbers[-1]) if numbers else None
    return None


def _strip_number(s: str) -> str:
    s = s.strip().rstrip(".").strip("$ ")
    return s.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", s) else s


def _verify_timeout() -> int | None:
    # math-verify's timeout uses SIGALRM, which only works in the main thread.
    if threading.current_thread() is not threading.main_thread():
        return None
    return max(1, min(MATH_VERIFY_TIMEOUT_S, int(time_left()) - 1))


def math_equal(pred: str, gold: str) -> tuple[bool, bool]:
    r"""(equal, timed_out): equal as strings or, through math-verify, as math objects.

    >>> math_equal("0.5", r"\frac{1}{2}")
    (True, False)
    >>> math_equal(r"\{1, 2\}", r"\{2, 1\}")
    (True, False)
    >>> math_equal("3", "4")
    (False, False)
    """
    if pred.replace(" ", "") == gold.replace(" ", ""):
        return True, False
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timeout = _verify_timeout()
    try:
        # \boxed{} makes math-verify take the whole string as the answer.
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout, raise_on_error=True)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout, raise_on_error=True)
        if not gold_parsed or not pred_parsed:
            return False, False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout, raise_on_error=True)), False
    except TimeoutException:
        return False, True
    except Exception:  # noqa: BLE001 - sympy raises anything on odd input; an unparsable answer is wrong
        return False, False


def math_reward(prompt: str, completion: str, *, answer: Any, **sample: Any) -> dict[str, float]:
    r"""1.0 if the completion's final answer equals `answer` mathematically, else 0.0.

    `answer` may be a bare answer or a worked solution ending in \boxed{} or "#### x" (GSM8K).
    Metrics: `has_answer` (an answer was found), `verify_timeout` (math-verify ran out of time;
    the sample then scores 0.0).

    >>> math_reward("What is 1/2 + 1/4?", r"We get $\boxed{0.75}$.", answer=r"\frac{3}{4}")
    {'reward': 1.0, 'acc': 1.0, 'has_answer': 1.0, 'verify_timeout': 0.0}
    >>> math_reward("Q", "Half of 10 is 5.\n#### 5", answer="Work... #### 5")["reward"]
    1.0
    >>> math_reward("Q", "The answer is 12.", answer="13")["reward"]
    0.0
    >>> math_reward("Q", "I don't know.", answer="13")
    {'reward': 0.0, 'acc': 0.0, 'has_answer': 0.0, 'verify_timeout': 0.0}
    """
    pred = extract_answer(completion)
    if pred is None:
        return {"reward": 0.0, "acc": 0.0, "has_answer": 0.0, "verify_timeout": 0.0}
    gold_text = str(answer)
    gold = extract_answer(gold_text, last_number=False) or gold_text.strip()
    equal, timed_out = math_equal(pred, gold)
    return {"reward": float(equal), "acc": float(equal), "has_answer": 1.0, "verify_timeout": float(timed_out)}


def dapo_math_reward(prompt: str, completion: str, *, answer: Any, **sample: Any) -> dict[str, float]:
    r"""The `math` verdict as DAPO's reward: +1.0 if correct, −1.0 otherwise (no answer included).

    >>> dapo_math_reward("Q", r"So oxed{7}.", answer="7")
    {'reward': 1.0, 'acc': 1.0, 'has_answer': 1.0, 'verify_timeout': 0.0}
    >>> dapo_math_reward("Q", "No idea.", answer="7")["reward"]
    -1.0
    """
    out = math_reward(prompt, completion, answer=answer)
    return {**out, "reward": 2.0 * out["acc"] - 1.0}


def _warm_math() -> None:
    """Import math-verify and run it once: in a reward worker this happens before the first call's process is
    forked, so no call pays for the import or the parsers' first use."""
    math_equal("0.5", r"\frac{1}{2}")


math_reward.warmup = _warm_math  # type: ignore[attr-defined]  # run by reward/pool_worker.py
dapo_math_reward.warmup = _warm_math  # type: ignore[attr-defined]


def arith_reward(prompt: str, completion: str, *, answer: Any, **sample: Any) -> dict[str, float]:
    """1.0 if the last integer in the completion equals int(answer), else 0.0 (exact; no tolerance);
    `acc` is the same verdict.

    A last number with a fractional part ("7.5") is not an integer and scores 0.0.

    >>> arith_reward("What is 3 + 4 + 5?", "3 + 4 = 7, 7 + 5 = 12. The answer is 12.", answer="12")
    {'reward': 1.0, 'acc': 1.0}
    >>> arith_reward("What is 2 - 9?", "2 - 9 = -7", answer=-7)["reward"]
    1.0
    >>> arith_reward("What is 3 + 4?", "The answer is 7.5", answer="7")["reward"]
    0.0
    >>> arith_reward("What is 3 + 4?", "seven", answer="7")["reward"]
    0.0
    """
    numbers = _INT_RE.findall(completion)
    correct = bool(numbers) and "." not in numbers[-1] and int(numbers[-1]) == int(str(answer).strip())
    return {"reward": float(correct), "acc": float(correct)}


def format_reward(prompt: str, completion: str, **sample: Any) -> float:
    """1.0 if the completion is exactly <think>...</think> then <answer>...</answer>, else 0.0.

    >>> format_reward("Q", "<think>3+4=7</think>\\n<answer>7</answer>")
    1.0
    >>> format_reward("Q", "<answer>7</answer>")
    0.0
    >>> format_reward("Q", "<think>a</think><answer>7</answer> trailing text")
    0.0
    """
    return 1.0 if _FORMAT_RE.match(completion) else 0.0
