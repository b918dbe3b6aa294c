"""benchmarks/learning_vs_trl.py's summary arithmetic on hand-made curves (the runs themselves are the benchmark)."""

from __future__ import annotations

import math

import pytest

from tests.benchmark_module import benchmark_module


@pytest.fixture(scope="module")
def lvt():
    with benchmark_module("learning_vs_trl") as module:
        yield module


def _run(accs: list[float], tokens_per_step: float = 100.0, every: int = 5) -> dict:
    return {"evals": [{"step": i * every, "accuracy": a, "tokens": i * every * tokens_per_step}
                      for i, a in enumerate(accs)],
            "train": [{"step": s, "tokens": s * tokens_per_step, "reward": 0.5, "entropy": 2.0 - 0.01 * s}
                      for s in range(1, every * (len(accs) - 1) + 1)], "wall_s": 10.0}


def test_late_drop_is_the_largest_fall_inside_the_last_third(lvt):
    # 30 steps, evals every 5: the last third is steps 20, 25, 30; the fall 15 -> 20 is before it
    r = lvt.summarize("t", "ours", {0: _run([0.1, 0.5, 0.9, 0.95, 0.6, 0.8, 0.7])}, steps=30, n_eval=200)
    assert r["late_drop"] == pytest.approx(0.1) and r["late_drop_steps"] == (25, 30)
    assert r["final_accuracy"] == 0.7
    assert r["final_se"] == pytest.approx(math.sqrt(0.7 * 0.3 / 200), abs=1e-4)  # one seed: binomial
    # a drop is a difference of two evals: 2 SE of (0.8 - 0.7)
    assert r["late_drop_2se"] == pytest.approx(2 * math.sqrt((0.8 * 0.2 + 0.7 * 0.3) / 200), abs=1e-4)
    assert r["late_drop_per_seed"][0]["late_drop"] == pytest.approx(0.1)


def test_several_seeds_use_the_spread_across_seeds(lvt):
    runs = {0: _run([0.1, 0.4, 0.6]), 1: _run([0.1, 0.6, 0.8]), 2: _run([0.1, 0.5, 0.7])}
    r = lvt.summarize("t", "ours", runs, steps=10, n_eval=200)
    assert r["accuracy_mean"] == [0.1, 0.5, 0.7] and r["accuracy_min"][2] == 0.6 and r["accuracy_max"][2] == 0.8
    assert r["final_se"] == pytest.approx(0.1 / math.sqrt(3), abs=1e-4)
    assert r["late_drop"] == 0.0 and r["train"]["entropy"][10] == pytest.approx(1.9)
    # seeds that agree by chance: the SE never falls below the eval's own noise (200 prompts x 3 seeds)
    same = lvt.summarize("t", "ours", {s: _run([0.1, 0.5, 0.7]) for s in range(3)}, steps=10, n_eval=200)
    assert same["final_se"] == pytest.approx(math.sqrt(0.7 * 0.3 / 600), abs=1e-4)


def test_goals_against_trl(lvt):
    ours = lvt.summarize("t", "ours", {0: _run([0.1, 0.85, 0.9], tokens_per_step=50)}, steps=10, n_eval=200)
    trl = lvt.summarize("t", "trl", {0: _run([0.1, 0.5, 0.9])}, steps=10, n_eval=200)
    goals = {g["arm"]: g for g in lvt.compare([ours, trl])}
    g = goals["ours"]
    # 90% of TRL's final 0.9 is 0.81: ours reaches it at step 5 (250 tokens), TRL at step 10 (1000 tokens)
    assert g["threshold"] == pytest.approx(0.81) and (g["tokens_ours"], g["tokens_trl"]) == (250, 1000)
    assert g["tokens_ratio"] == 0.25 and g["tokens_ok"] and g["final_ok"] and g["late_drop_ok"]
    behind = lvt.summarize("t", "ours", {0: _run([0.1, 0.3, 0.6])}, steps=10, n_eval=200)
    g = next(g for g in lvt.compare([behind, trl]) if g["arm"] == "ours")
    assert not g["final_ok"] and g["tokens_ours"] is None and not g["tokens_ok"]


@pytest.mark.parametrize("spec", ["ours:trainer.lr=1", "x", "lin:", "lin:trainer.lr"])
def test_variant_specs_are_checked(lvt, spec):
    with pytest.raises(SystemExit):
        lvt.parse_variants([spec])


def test_variant_spec(lvt):
    assert lvt.parse_variants(["lin:trainer.lr_scheduler=linear,trainer.lr=1e-5"]) == {
        "lin": ["trainer.lr_scheduler=linear", "trainer.lr=1e-5"]}
