"""Replay ablation: the quickstart task with and without reweighted replay, same seeds, same generated tokens.

    python benchmarks/replay_ablation.py [--config configs/quickstart.yaml] [--steps 40] [--seed 0]
                                         [--arms off on] [--out outputs/replay_ablation] [key=value ...]

Each arm is a real `python -m launch.train` run (its own local Ray cluster), one after the other:
  - off: the recipe as is, `--steps` steps; its generated response tokens T set the budget;
  - on:  `algorithm.replay.enable=true` (SSR defaults: shortfall top-up, max_staleness 1, C = 2), stopped by
         `trainer.max_generated_tokens=T`, so both arms spend the same generation (to within one step);
  - ds: DAPO dynamic sampling (regenerate until every group is informative), under the same budget;
  - ds_on: dynamic sampling capped at 2 rounds per step, the replay buffer filling what is still missing.
Same `trainer.seed` everywhere: the same prompt order and the same sampling seeds per round.
Reports per arm the held-out greedy accuracy at every eval step, the generated tokens, the informative
samples trained (|advantage| > 0, fresh and replayed) and generated tokens per informative sample.
Prints one JSON object per arm; extra `key=value` overrides go to every arm. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ARMS = {
    "off": [],
    "on": ["algorithm.replay.enable=true"],
    "ds": ["algorithm.dynamic_sampling.enable=true"],
    "ds_on": ["algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.max_rounds=2",
              "algorithm.replay.enable=true"],
}


def run_arm(name: str, args: argparse.Namespace, budget: int | None) -> dict:
    out = Path(args.out) / name
    overrides = [f"trainer.output_dir={out}", f"trainer.seed={args.seed}", "trainer.resume=never",
                 "trainer.save_every=0", "logging.console=plain", "logging.wandb_mode=disabled", *ARMS[name]]
    if budget is None:
        overrides.append(f"trainer.total_steps={args.steps}")
    else:  # the budget ends the run; the step cap only guards against a budget that is never reached
        overrides += [f"trainer.total_steps={4 * args.steps}", f"trainer.max_generated_tokens={budget}"]
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "launch.train", args.config, *overrides, *args.overrides]
    t0 = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"arm {name!r} failed (exit {rc}); see {out / 'train.log'}")
    return summarize(name, out / "metrics.jsonl", wall)


def summarize(name: str, metrics_path: Path, wall_s: float) -> dict:
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    steps = [r for r in records if r["step"] > 0]
    generated = sum(r["perf/generated_tokens"] for r in steps)
    informative = sum(r["actor/informative_samples"] for r in steps)
    replayed = sum(round(r.get("replay/fraction", 0.0) * r["actor/trained_samples"]) for r in steps)
    return {
        "arm": name,
        "steps": steps[-1]["step"],
        "generated_tokens": generated,
        "informative_samples": informative,
        "replayed_samples": replayed,
        "tokens_per_informative_sample": generated / informative if informative else None,
        "eval_accuracy": {r["step"]: r["eval/accuracy"] for r in records if "eval/accuracy" in r},
        "final_eval_accuracy": next((r["eval/accuracy"] for r in reversed(records) if "eval/accuracy" in r), None),
        "reward_mean": sum(r["reward/mean"] for r in steps) / len(steps),
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=40, help="steps of the `off` arm; its tokens are the budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=["off", "on"], choices=list(ARMS))
    ap.add_argument("--out", default="outputs/replay_ablation")
    ap.add_argument("--budget", type=int, default=None,
                    help="generated-token budget for every arm (default: what the `off` arm spends in --steps)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every arm")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    arms, budget = list(args.arms), args.budget
    if budget is None:
        if "off" not in arms:
            raise SystemExit("--budget is required without the `off` arm (whose --steps set the token budget)")
        arms.remove("off")
        first = run_arm("off", args, None)  # the baseline runs first: it defines the budget
        print(json.dumps(first), flush=True)
        budget = first["generated_tokens"]
    for name in arms:
        print(json.dumps(run_arm(name, args, budget)), flush=True)


if __name__ == "__main__":
    main()
