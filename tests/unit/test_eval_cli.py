"""`python -m launch.eval`: bad input stops it before any model loads with one `error:` line naming the argument,
key or file and the fix (exit status 2); `--help` lists the eval keys; what MODEL_OR_CHECKPOINT may name
(checkpoint, its hf/, final/, a run directory) resolves to the right model and run. The report's pure part
(launch/eval_report.py) on hand-made samples: groups per data_source, failed rewards, no `acc`, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch import checkpoint
from launch import eval as launch_eval
from launch.eval_report import NO_SOURCE, build_report, format_table
from rl.types import Sample


def _errors(capsys, argv: list[str]) -> list[str]:
    assert launch_eval.main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines


def _run_dir(tmp_path: Path, *, hf: bool = True, final: bool = False) -> Path:
    """A run directory as training leaves it: config.yaml, a complete checkpoint (with or without hf/)."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_3"
    (ckpt / "trainer").mkdir(parents=True)
    (ckpt / checkpoint.MARKER).write_text("3")
    (run / "config.yaml").write_text("trainer:\n  total_steps: 3\n")
    if hf:
        (ckpt / "hf").mkdir()
        (ckpt / "hf" / "config.json").write_text("{}")
    if final:
        (run / "final").mkdir()
        (run / "final" / "config.json").write_text("{}")
    return run


def test_usage_and_help(capsys):
    assert "give MODEL_OR_CHECKPOINT and DATA" in _errors(capsys, [])[0]
    assert "give MODEL_OR_CHECKPOINT and DATA" in _errors(capsys, ["tiny-random", "eval.k=2"])[0]
    assert launch_eval.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m launch.eval" in out and "eval.k (int, default 8)" in out and "trainer.eval_k" in out


@pytest.mark.parametrize("argv, words", [
    (["/nonexistent/model", "arith"], ["MODEL_OR_CHECKPOINT /nonexistent/model", "alias"]),
    (["tiny-random", "arith", "eval.kk=2"], ["eval.kk", "did you mean eval.k?"]),
    (["tiny-random", "arith", "eval.k=0", "eval.greedy=false"], ["evaluates nothing", "eval.k >= 1"]),
    (["tiny-random", "arith", "reward.fns=[arithh]"], ["reward.fns", "arithh", "did you mean 'arith'"]),
])
def test_one_line_errors(capsys, tmp_path, argv, words):
    line = _errors(capsys, [*argv, f"model.cache_dir={tmp_path / 'never'}"])[0]
    assert all(w in line for w in words), line
    assert not (tmp_path / "never").exists()  # failed before any alias was built


def test_missing_data_file(capsys, tiny_model_dir):
    line = _errors(capsys, [tiny_model_dir, "/nonexistent/heldout.jsonl"])[0]
    assert "DATA /nonexistent/heldout.jsonl: file not found" in line


def test_checkpoints_without_an_export_or_incomplete(capsys, tmp_path):
    run = _run_dir(tmp_path, hf=False)
    line = _errors(capsys, [str(run / "checkpoints" / "step_3"), "arith"])[0]  # nor DeepSpeed model states
    assert "no hf/ export and no DeepSpeed model states" in line and "trainer.checkpoint_hf=true" in line
    assert "final/" in line
    elsewhere = tmp_path / "copied_step_3"
    (run / "checkpoints" / "step_3").rename(elsewhere)
    line = _errors(capsys, [str(elsewhere), "arith"])[0]
    assert "no hf/ export" in line and "not inside its run directory" in line
    killed = run / "checkpoints" / "step_4"
    killed.mkdir()
    assert "not a complete checkpoint" in _errors(capsys, [str(killed), "arith"])[0]
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text("{}\n")
    assert "neither final/ nor a complete checkpoint" in _errors(capsys, [str(empty), "arith"])[0]


def test_what_a_run_path_resolves_to(tmp_path):
    run = _run_dir(tmp_path)
    ckpt = run / "checkpoints" / "step_3"
    for spec in (ckpt, ckpt / "hf", run):  # the checkpoint, its export, the run (no final/ yet: newest checkpoint)
        target = launch_eval.resolve_target(spec, str(spec))
        assert (target.model, target.name, target.run_dir) == (str((ckpt / "hf").resolve()), "step_3", run)
    _run_dir(tmp_path / "b", final=True)
    run_b = tmp_path / "b" / "run"
    target = launch_eval.resolve_target(run_b, str(run_b))  # a finished run: its final/
    assert (target.model, target.name, target.run_dir) == (str((run_b / "final").resolve()), "final", run_b)


def _s(prompt_id: int, acc: float | None, source: str | None, status: str = "ok") -> Sample:
    fields = {"answer": "1", **({"data_source": source} if source else {})}
    metrics = {} if acc is None else {"acc": acc}
    reward = None if status != "ok" else (acc if acc is not None else 0.5)
    return Sample(prompt_id, -1, [1], [2], [0.0], "stop", 0, reward=reward, reward_metrics=metrics,
                  reward_status=status, fields=fields)


def test_report_groups_and_table():
    greedy = [_s(0, 1.0, "a"), _s(1, 0.0, "a"), _s(2, 0.0, None, status="error")]
    sampled = [_s(0, 1.0, "a"), _s(0, 0.0, "a"), _s(1, 0.0, "a"), _s(1, 0.0, "a"),
               _s(2, 1.0, None), _s(2, 0.0, None, status="error")]
    r = build_report(greedy, sampled, k=2, resamples=100, level=0.9, seed=0, header={"settings": {"ci_level": 0.9}})
    assert r["correctness"] == "acc" and list(r["by_data_source"]) == ["a", NO_SOURCE]  # the rows without one last
    assert r["overall"]["greedy"]["accuracy"]["value"] == pytest.approx(1 / 3)  # the failed reward is not correct
    assert r["overall"]["sampled"]["pass@2"]["value"] == pytest.approx(2 / 3)  # prompts 0 and 2 each have one right
    assert r["overall"]["reward_errors"] == 2 and r["by_data_source"]["a"]["reward_errors"] == 0
    assert r["by_data_source"][NO_SOURCE]["sampled"]["avg@2"]["value"] == 0.5
    table = format_table(r).splitlines()
    assert table[0].split()[:4] == ["group", "prompts", "greedy", "accuracy"] and "pass@2" in table[0]
    assert [ln.split()[0] for ln in table[2:5]] == ["all", "a", "(no"] and "90% percentile-bootstrap" in table[-1]


def test_report_without_acc_gives_mean_rewards():
    r = build_report([_s(0, None, "a")], [_s(0, None, "a"), _s(0, None, "a")], k=2, resamples=10, level=0.95,
                     seed=0, header={})
    assert r["correctness"] == "reward"
    assert r["overall"]["greedy"] == {"reward_mean": {"value": 0.5, "ci": [0.5, 0.5], "stderr": 0.0}}
    assert list(r["overall"]["sampled"]) == ["reward_mean@2"]
