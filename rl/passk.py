"""pass@k and avg@k from n sampled answers per prompt, with confidence intervals over prompts.

Pure functions, no I/O: `python -m launch.eval` and the training-time eval (rl/steps.py `eval_sampled_metrics`)
both use them (docs/evaluation.md).

- pass@k, the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code",
  arXiv 2107.03374, §2.1 eq. 1): with n answers to a prompt of which c are correct,
  pass@k = 1 − C(n−c, k) / C(n, k), the chance that k answers drawn without replacement from the n include a
  correct one, averaged over prompts. The binomials overflow for n in the hundreds; the product form
  C(n−c, k) / C(n, k) = Π_{i=n−c+1..n} (1 − k/i) (the paper's numerically stable version, Fig. 3) never does.
- avg@k: the mean correctness of all n answers per prompt (= the expected pass@1: the estimator at k=1 is c/n).
- Confidence intervals: the prompt is the unit of sampling (answers to one prompt are correlated; Miller 2024,
  "Adding Error Bars to Evals", arXiv 2411.00640), so every statistic is a mean of per-prompt estimates
  and its interval comes from resampling prompts: a percentile bootstrap (Efron & Tibshirani 1993, ch. 13) with
  a fixed seed, the same resampled prompt sets for every statistic. It stays inside [0, 1] and needs no
  normality of a mean of few bounded values; the CLT standard error sd/√P is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `c` of `n` answers correct (Chen et al. 2021, eq. 1, product form).

    >>> round(pass_at_k(5, 2, 2), 12)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    0.7
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k(n={n}, c={c}, k={k}): need 0 <= c <= n and 1 <= k <= n")
    if n - c < k:  # every k-subset holds a correct answer
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_upto(k: int) -> list[int]:
    """The k' at which pass@k' is reported for k answers per prompt: 1, 2, 4, ... (powers of two below k), and k.

    >>> ks_upto(8), ks_upto(6), ks_upto(1)
    ([1, 2, 4, 8], [1, 2, 4, 6], [1])
    """
    if k < 1:
        raise ValueError(f"ks_upto({k}): need k >= 1")
    out, p = [], 1
    while p < k:
        out.append(p)
        p *= 2
    return out + [k]


def per_prompt(correct: Sequence[Sequence[bool]], k: int) -> np.ndarray:
    """(P,) each prompt's pass@k estimate from its answers' correctness (a prompt may have any n >= k answers)."""
    short = [i for i, answers in enumerate(correct) if len(answers) < k]
    if short:
        raise ValueError(f"pass@{k}: prompt {short[0]} has {len(correct[short[0]])} answers; pass@k needs n >= k")
    return np.array([pass_at_k(len(a), int(sum(map(bool, a))), k) for a in correct], dtype=np.float64)


@dataclass(frozen=True)
class Estimate:
    """A mean over prompts with its bootstrap interval and CLT standard error."""

    value: float
    lo: float
    hi: float
    stderr: float

    def as_dict(self) -> dict[str, float | list[float]]:
        return {"value": self.value, "ci": [self.lo, self.hi], "stderr": self.stderr}


def bootstrap_indices(num_prompts: int, resamples: int, seed: int) -> np.ndarray:
    """(B, P) prompt indices drawn with replacement; one draw shared by every statistic of a group (paired)."""
    return np.random.default_rng(seed).integers(0, num_prompts, size=(resamples, num_prompts))


def estimate(values: np.ndarray, indices: np.ndarray, level: float = 0.95) -> Estimate:
    """Mean of the per-prompt `values` (P,), its percentile-bootstrap `level` interval over the resampled prompt
    sets `indices` (B, P), and the standard error sd/√P (0 for one prompt)."""
    if values.size == 0:
        raise ValueError("estimate: no prompts")
    if not 0.0 < level < 1.0:
        raise ValueError(f"estimate: level={level} must be in (0, 1)")
    means = values[indices].mean(axis=1) if indices.size else np.array([values.mean()])
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    stderr = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return Estimate(float(values.mean()), float(lo), float(hi), stderr)


def sampled_summary(correct: Sequence[Sequence[bool]], ks: Sequence[int], *, resamples: int = 1000,
                    level: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """avg@n and pass@k' for every k' in `ks`, each with its interval, from every prompt's answers' correctness;
    n is the number of answers per prompt (the key says `avg@n` with n the largest count)."""
    idx = bootstrap_indices(len(correct), resamples, seed)
    n = max(len(a) for a in correct)
    avg = np.array([sum(map(bool, a)) / len(a) for a in correct], dtype=np.float64)
    out = {f"avg@{n}": estimate(avg, idx, level)}
    for k in ks:
        out[f"pass@{k}"] = estimate(per_prompt(correct, k), idx, level)
    return out


def mean_summary(values: Sequence[float], *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> Estimate:
    """A mean of per-prompt values (greedy accuracy, a mean reward) with the same interval as `sampled_summary`."""
    arr = np.asarray(values, dtype=np.float64)
    return estimate(arr, bootstrap_indices(arr.size, resamples, seed), level)
