"""Metrics out: `metrics.jsonl` (always), wandb (offline by default), TensorBoard (`logging.tensorboard`),
and the console.

`metrics.jsonl` holds one JSON object per step with at least `step`, `time` (Unix seconds when it was logged),
`reward/mean`, `loss/policy`,
`perf/step_time_s`, `perf/tokens_per_s`, plus `eval/accuracy` on eval steps. The console shows a
progress bar with step, reward, eval accuracy, tokens/s and the step time split into
generate / reward / train / sync, or one plain line per step with `logging.console=plain` and whenever
stdout is not a terminal (`ray job submit` logs, nohup, SLURM, a pipe): a progress bar draws nothing there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("rlvr")


class MetricsLogger:
    def __init__(self, output_dir: str | Path, *, total_steps: int, config: dict, wandb_mode: str,
                 wandb_project: str, console: str, start_step: int = 0, tensorboard: bool = False):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.last_eval: float | None = None
        self.console = console
        resumed = start_step > 0
        self._wandb = _init_wandb(output_dir, config, wandb_mode, wandb_project, resumed)
        self._wandb_logged = self._last_logged_step() if self._wandb is not None and resumed else -1
        self._tb_dir = Path(output_dir) / "tensorboard" if tensorboard else None
        self._tb = self._tensorboard(start_step + 1 if resumed else 0)  # a resume redoes the steps after its checkpoint
        self._progress = None
        if console == "rich" and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")
            self._progress.start()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None and step > self._wandb_logged:  # wandb's steps only go forward
            self._wandb.log(record, step=step)
            self._wandb_logged = step
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, global_step=step, walltime=record["time"])
            self._tb.flush()
        if "eval/accuracy" in metrics:
            self.last_eval = metrics["eval/accuracy"]
        self._show(step, metrics)

    def rewind(self, step: int) -> None:
        """Drop the rows of steps after `step` from metrics.jsonl and samples.jsonl (-1: every row): the run goes
        on from the checkpoint of `step` and logs the steps after it again, so each step keeps one row. wandb
        keeps the rows it was sent the first time (it takes no step twice); a deterministic replay logs the same
        values again, except timings."""
        if self._tb is not None and step >= 0:  # TensorBoard drops the events from step + 1 on
            self._tb.close()
            self._tb = self._tensorboard(step + 1)
        for path in (self.path, self.path.parent / "samples.jsonl"):
            if not path.exists():
                continue
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
            if len(kept) != len(lines):
                tmp = path.with_suffix(".rewind")
                tmp.write_text("".join(kept))
                os.replace(tmp, path)

    def _tensorboard(self, purge_step: int | None):
        if self._tb_dir is None:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self._tb_dir), purge_step=purge_step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Append what the model wrote at this step to samples.jsonl (one JSON object per sample)."""
        if not samples:
            return
        with (self.path.parent / "samples.jsonl").open("a") as f:
            for s in samples:
                f.write(json.dumps(_clean({"step": step, **s})) + "\n")

    def _last_logged_step(self) -> int:
        """The newest step in metrics.jsonl before this process (a resumed run's wandb run has it already)."""
        if not self.path.exists():
            return -1
        return max((json.loads(line)["step"] for line in self.path.read_text().splitlines() if line.strip()),
                   default=-1)

    def _show(self, step: int, m: dict[str, Any]) -> None:
        if "reward/mean" not in m:  # eval-only record (step 0)
            line = f"eval/accuracy {m.get('eval/accuracy', float('nan')):.3f}"
        else:
            acc = "-" if self.last_eval is None else f"{self.last_eval:.3f}"
            line = (f"reward {m['reward/mean']:.3f} | eval acc {acc} | {m.get('perf/tokens_per_s', 0):.0f} tok/s | "
                    f"gen {m.get('perf/generate_s', 0):.1f}s reward {m.get('perf/reward_s', 0):.1f}s "
                    f"train {m.get('perf/train_s', 0):.1f}s sync {m.get('perf/sync_s', 0):.1f}s")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=line)
        else:
            print(f"step {step}: {line}", flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; null says "not measured"
    if isinstance(v, dict):  # samples.jsonl's per-function metrics
        return {k: _clean(x) for k, x in v.items()}
    return v


def _init_wandb(output_dir, config: dict, mode: str, project: str, resumed: bool):
    if mode == "disabled":
        return None
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        id_file = Path(output_dir) / "wandb_run_id"  # a resumed run continues the same wandb run
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        return wandb.init(project=project, dir=str(output_dir), mode=mode, config=config, reinit="finish_previous",
                          id=run_id, resume="allow")
    except Exception as e:  # wandb must never stop a run: metrics.jsonl is the record
        log.warning("wandb disabled (%s: %s); metrics still go to metrics.jsonl", type(e).__name__, e)
        return None
