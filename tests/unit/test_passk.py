"""rl/passk.py: the unbiased pass@k estimator against its closed form, hand-derived values and brute-force
enumeration of every k-subset; its identities (pass@1 = c/n = avg@n, monotone in k); the bootstrap interval's
determinism, coverage of the mean and agreement with the CLT interval on a large sample."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rl import passk


def _closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _brute_force(n: int, c: int, k: int) -> float:
    """The fraction of the C(n, k) ways to pick k of the n answers that include at least one correct one."""
    answers = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(answers[i] for i in s) for s in subsets) / len(subsets)


def test_worked_examples():
    # n=5, c=2, k=2: C(3,2)/C(5,2) = 3/10 of the pairs hold no correct answer -> 0.7
    assert passk.pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # n=4, c=1, k=2: the pairs without the one correct answer are C(3,2)=3 of C(4,2)=6 -> 0.5
    assert passk.pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-12)
    # n=10, c=3, k=1: c/n
    assert passk.pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-12)
    assert passk.pass_at_k(8, 0, 8) == 0.0  # nothing correct
    assert passk.pass_at_k(8, 1, 8) == 1.0  # all answers drawn: the correct one is among them
    assert passk.pass_at_k(8, 5, 4) == 1.0  # n - c = 3 < k: every 4-subset holds a correct answer


@pytest.mark.parametrize("n", range(1, 9))
def test_equals_closed_form_and_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = passk.pass_at_k(n, c, k)
            assert got == pytest.approx(_closed_form(n, c, k), abs=1e-12), (n, c, k)
            assert got == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_product_form_is_stable_where_the_binomials_overflow_floats():
    # C(2000, 1000) ~ 1e600 overflows a float; exact integer arithmetic gives the reference
    n, c, k = 2000, 7, 1000
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # Python ints: exact ratio, rounded once
    assert passk.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)


def test_identities_pass1_is_c_over_n_and_monotone_in_k():
    for n in (4, 16):
        for c in range(n + 1):
            assert passk.pass_at_k(n, c, 1) == pytest.approx(c / n)
            values = [passk.pass_at_k(n, c, k) for k in range(1, n + 1)]
            assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("n, c, k", [(3, 1, 0), (3, 1, 4), (3, 4, 1), (3, -1, 1)])
def test_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="need 0 <= c <= n and 1 <= k <= n"):
        passk.pass_at_k(n, c, k)


def test_ks_upto():
    assert passk.ks_upto(1) == [1]
    assert passk.ks_upto(4) == [1, 2, 4]
    assert passk.ks_upto(10) == [1, 2, 4, 8, 10]
    with pytest.raises(ValueError):
        passk.ks_upto(0)


def test_sampled_summary_worked_example():
    # prompt A: 2 of 4 correct, prompt B: 0 of 4, prompt C: 4 of 4
    correct = [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    s = passk.sampled_summary(correct, [1, 2, 4], resamples=200, seed=0)
    assert list(s) == ["avg@4", "pass@1", "pass@2", "pass@4"]
    assert s["avg@4"].value == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["pass@1"].value == pytest.approx(s["avg@4"].value)  # the estimator at k=1 is c/n
    # pass@2 of A: 1 - C(2,2)/C(4,2) = 5/6; B: 0; C: 1
    assert s["pass@2"].value == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert s["pass@4"].value == pytest.approx(2 / 3)
    for e in s.values():
        assert 0.0 <= e.lo <= e.value <= e.hi <= 1.0
    # the same resampled prompt sets for every statistic: the interval bounds keep the order of the values
    assert s["pass@1"].lo <= s["pass@2"].lo <= s["pass@4"].lo


def test_per_prompt_needs_k_answers():
    with pytest.raises(ValueError, match="prompt 1 has 2 answers; pass@k needs n >= k"):
        passk.per_prompt([[1, 0, 0], [1, 0]], 3)


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(123)
    values = rng.binomial(1, 0.3, size=400).astype(float)
    a = passk.mean_summary(values, resamples=2000, seed=7)
    b = passk.mean_summary(values, resamples=2000, seed=7)
    assert a == b  # fixed seed: the same interval every time
    assert a.lo < values.mean() < a.hi
    # for a large sample the percentile interval agrees with the CLT one, mean ± 1.96 sd/√P
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert a.stderr == pytest.approx(se)
    assert a.lo == pytest.approx(values.mean() - 1.96 * se, abs=0.01)
    assert a.hi == pytest.approx(values.mean() + 1.96 * se, abs=0.01)


def test_degenerate_groups():
    one = passk.mean_summary([1.0], resamples=100)
    assert (one.value, one.lo, one.hi, one.stderr) == (1.0, 1.0, 1.0, 0.0)
    same = passk.mean_summary([0.0] * 5, resamples=100)
    assert (same.lo, same.hi) == (0.0, 0.0)
    with pytest.raises(ValueError, match="no prompts"):
        passk.mean_summary([], resamples=10)
