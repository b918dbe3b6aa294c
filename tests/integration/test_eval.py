"""Evaluation end to end: a one-step run (local Ray, DeepSpeed, the real reward sandbox) whose training eval
samples k answers per prompt, then `python -m launch.eval` on its checkpoint (a subprocess, as a user runs it)
and on its final/ (in-process). Checks that training logs eval/avg@k and eval/pass@k beside the unchanged greedy
eval/accuracy; that the checkpoint carries an hf/ export with exactly final/'s weights; that the eval command
takes its reward function from the run's config.yaml; and that the report agrees with itself and with
samples.jsonl (pass@1 = avg@k, pass@k monotone in k, greedy accuracy = the fraction of correct greedy answers,
groups per data_source including rows without one), the same on the checkpoint as on final/, and the same
again on the checkpoint with its hf/ removed (the weights then come from its DeepSpeed state)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch import eval as launch_eval
from launch.eval_report import NO_SOURCE

from .conftest import debug_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

PARITY_REWARD = '''
def parity(prompt: str, completion: str, **sample) -> dict:
    """Correct for about half of all completions (odd character-code sum): a random model scores neither 0 nor 1."""
    acc = float(sum(map(ord, completion)) % 2 == 1)
    return {"reward": acc, "acc": acc}
'''


def _data(tmp_path: Path) -> Path:
    rows = [{"prompt": f"What is {i} + {j}?", "answer": str(i + j), **({"data_source": src} if src else {})}
            for (i, j), src in zip([(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (0, 6)], ["a", "a", "b", "b", None, None])]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def _check_report(report: dict, samples: list[dict], k: int) -> None:
    assert report["correctness"] == "acc" and report["settings"]["k"] == k
    assert sorted(report["by_data_source"]) == sorted(["a", "b", NO_SOURCE])
    assert report["overall"]["num_prompts"] == 6
    assert all(g["num_prompts"] == 2 for g in report["by_data_source"].values())
    for name, group in [("all", report["overall"]), *report["by_data_source"].items()]:
        rows = [s for s in samples if name == "all" or s["data_source"] == name]
        greedy = [s for s in rows if s["mode"] == "greedy"]
        sampled = [s for s in rows if s["mode"] == "sampled"]
        assert len(sampled) == k * len(greedy)
        acc = group["greedy"]["accuracy"]
        assert acc["value"] == pytest.approx(sum(s["correct"] for s in greedy) / len(greedy))
        st = group["sampled"]
        assert list(st) == [f"avg@{k}", "pass@1", "pass@2", "pass@4"]
        assert st[f"avg@{k}"]["value"] == pytest.approx(sum(s["correct"] for s in sampled) / len(sampled))
        assert st["pass@1"]["value"] == pytest.approx(st[f"avg@{k}"]["value"])  # the estimator at k=1 is c/n
        values = [st[f"pass@{kk}"]["value"] for kk in (1, 2, 4)]
        assert values == sorted(values)
        for e in [acc, *st.values()]:
            assert 0.0 <= e["ci"][0] <= e["value"] <= e["ci"][1] <= 1.0
    assert all(s["correct"] == (s["reward_metrics"]["acc"] == 1.0) for s in samples)
    # not degenerate: the parity reward makes some answers right and some wrong
    assert 0.0 < report["overall"]["sampled"]["avg@4"]["value"] < 1.0


def test_train_with_sampled_eval_then_evaluate_checkpoint_and_final(ray_cluster, tmp_path):
    from launch.loop import run

    reward_file = tmp_path / "parity_reward.py"
    reward_file.write_text(PARITY_REWARD)
    run_dir = tmp_path / "run"
    run(debug_config(run_dir, "trainer.total_steps=1", "trainer.save_every=1", "trainer.num_workers=1",
                     "trainer.eval_k=4", "data.arith.eval_size=6", f"reward.fns=[{reward_file}:parity]"))

    # training eval: greedy as before, plus the sampled statistics
    for r in _records(run_dir / "metrics.jsonl"):  # step 0 and step 1
        assert {"eval/accuracy", "eval/avg@4", "eval/pass@1", "eval/pass@2", "eval/pass@4"} <= set(r)
        assert r["eval/pass@1"] == pytest.approx(r["eval/avg@4"])
        assert r["eval/pass@1"] <= r["eval/pass@2"] <= r["eval/pass@4"]

    # the checkpoint's hf/ export is the trained model, as final/ holds it
    ckpt = run_dir / "checkpoints" / "step_1"
    hf, final = _weights(ckpt / "hf"), _weights(run_dir / "final")
    assert sorted(hf) == sorted(final) and all((hf[n] == final[n]).all() for n in hf)

    data = _data(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "launch.eval", str(ckpt), str(data), "eval.k=4",
                           "eval.bootstrap=200"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "eval" / "step_1-heldout"  # the default: in the run directory
    assert f"report: {out / 'report.json'}" in proc.stdout and "pass@4" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    samples = _records(out / "samples.jsonl")
    assert report["config"]["reward"]["fns"] == [f"{reward_file}:parity"]  # from the run's config.yaml
    assert report["model"] == str((ckpt / "hf").resolve())
    _check_report(report, samples, k=4)

    # final/: the same weights, the same seeds, so the same answers and the same report
    assert launch_eval.main([str(run_dir / "final"), str(data), "eval.k=4", "eval.bootstrap=200",
                             f"eval.output={tmp_path / 'final_eval'}"]) == 0
    again = json.loads((tmp_path / "final_eval" / "report.json").read_text())
    assert [s["completion"] for s in _records(tmp_path / "final_eval" / "samples.jsonl")] == \
        [s["completion"] for s in samples]
    assert again["overall"] == report["overall"] and again["by_data_source"] == report["by_data_source"]

    # a checkpoint saved without hf/ (trainer.checkpoint_hf=false, older runs): read from its DeepSpeed state
    shutil.rmtree(ckpt / "hf")
    assert launch_eval.main([str(ckpt), str(data), "eval.k=4", "eval.bootstrap=200",
                             f"eval.output={tmp_path / 'rebuilt_eval'}"]) == 0
    assert _weights(run_dir / "eval" / ".hf-step_1").keys() == final.keys()
    rebuilt = json.loads((tmp_path / "rebuilt_eval" / "report.json").read_text())
    assert rebuilt["overall"] == report["overall"] and rebuilt["by_data_source"] == report["by_data_source"]
