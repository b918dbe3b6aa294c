"""Recovery time per fault kind: the time from the fault to the first step completed after recovery, and the
steps lost, each measured on a real run with a real signal (faults.inject, rl/faults.py).

    python benchmarks/faults.py                       # tiny debug recipe, 6 steps, checkpoint every 2
    python benchmarks/faults.py --recipe configs/quickstart.yaml --steps 3 --save-every 1 --cases "rollout worker SIGKILL" "trainer rank SIGKILL"

Every case is one `python -m launch.train` run in a fresh process with its own local Ray cluster, one after the
other; the first is the uninterrupted baseline. For each case it prints a JSON line and, at the end, a Markdown
table:
- `fault→step_s`: from the fault (the time the injected actor recorded just before the signal, or the SIGKILL
  of the driver) to the `time` of the first metrics row completed after recovery (`that_step`); it includes
  the rest of that step, whose uninterrupted duration is `its_baseline_step_s`;
- `recovery_s`: the driver's own count of seconds spent replacing or rebuilding (faults/recovery_s);
- `wall_over_baseline_s`: the case's wall time minus the baseline's;
- `steps_recomputed`: steps trained a second time after a trainer rebuild (faults/steps_replayed), plus the
  step in flight;
- `steps_lost`: steps whose metrics differ from the baseline or are missing (goal 0); timings, `time` and
  faults/* are not compared.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases(save_every: int) -> list[tuple[str, list[str], str | None]]:
    """(name, extra overrides, how the fault is made). Calls are counted per actor: `generate` call 1 is the
    step-0 eval, so call 4 is step 3's generation (eval_every=0); `train_step` call k is step k."""
    hang = ["faults.rollout_timeout_s=10", "faults.reward_timeout_s=10", "faults.trainer_timeout_s=20"]
    k = save_every + 2  # the step after the one after a checkpoint: one step to replay
    return [
        ("baseline", [], None),
        ("rollout worker SIGKILL", ["faults.inject=[rollout:0:generate:4:kill]"], None),
        ("reward worker SIGKILL", ["faults.inject=[reward:0:score:4:kill]"], None),
        ("trainer rank SIGKILL", [f"faults.inject=[trainer:0:train_step:{k}:kill]"], None),
        ("rollout worker hung (10 s deadline)", ["faults.inject=[rollout:0:generate:4:hang]", *hang], None),
        ("reward worker SIGSTOP (10 s deadline)", ["faults.inject=[reward:0:score:4:stop]", *hang], None),
        ("trainer rank hung (20 s deadline)", [f"faults.inject=[trainer:0:train_step:{k}:hang]", *hang], None),
        ("driver SIGKILL, rerun", [], f"kill-driver-after:{save_every + 1}"),
    ]


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def learned(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "time" and not k.startswith(("perf/", "faults/"))}


def run_case(cmd: list[str], out: Path, env: dict, driver_kill: str | None) -> tuple[float, float | None]:
    """Runs the command (twice for a driver kill); returns (wall seconds, fault time or None)."""
    t0 = time.time()
    if driver_kill is None:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.time() - t0, None
    after = int(driver_kill.split(":")[1])
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    while not any(r["step"] == after for r in rows(out)):
        if p.poll() is not None:
            raise RuntimeError("the run ended before the driver could be killed")
        time.sleep(0.05)
    fault = time.time()
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t0, fault


def recomputed(last: dict, driver_kill: str | None, save_every: int) -> int:
    if driver_kill is not None:  # killed after step k was logged: the rerun trains again from the checkpoint before
        k = int(driver_kill.split(":")[1])
        return k - save_every * (k // save_every)
    return int(last.get("faults/steps_replayed", 0)) + int(last.get("faults/trainer_restarts", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="configs/debug_cpu.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--out", default="/tmp/rlvr-faults-bench")
    ap.add_argument("--cases", nargs="*", help="run only the cases whose name starts with one of these (and the "
                                               "baseline), e.g. --cases rollout trainer")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE=env.get("RAY_AUTH_MODE", "disabled"), RAY_USAGE_STATS_ENABLED="0")
    base_rows: dict[int, dict] = {}
    base_step_s: dict[int, float] = {}
    base_wall = 0.0
    table = []
    for name, extra, driver_kill in cases(args.save_every):
        if args.cases and name != "baseline" and not name.startswith(tuple(args.cases)):
            continue
        out = Path(args.out) / name.split(" (")[0].replace(" ", "_").replace(",", "")
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, "-m", "launch.train", args.recipe, f"trainer.output_dir={out}",
               f"trainer.total_steps={args.steps}", f"trainer.save_every={args.save_every}", "trainer.eval_every=0",
               "logging.console=plain", "logging.wandb_mode=disabled", *extra]
        wall, fault = run_case(cmd, out, env, driver_kill)
        got = rows(out)
        if name == "baseline":
            base_rows, base_wall = {r["step"]: learned(r) for r in got}, wall
            base_step_s = {r["step"]: r.get("perf/step_time_s") for r in got}
        injected = out / "faults" / "injected.jsonl"
        if fault is None and injected.exists():
            fault = json.loads(injected.read_text().splitlines()[0])["time"]
        if extra and fault is None:
            raise RuntimeError(f"{name}: the injected fault never fired ({extra}); does the recipe have that actor?")
        after = [r for r in got if fault is not None and r["time"] >= fault]
        last = got[-1] if got else {}
        by_step = {r["step"]: learned(r) for r in got}
        lost = sum(1 for s, r in base_rows.items() if s > 0 and by_step.get(s) != r)
        result = {
            "case": name,
            "fault→step_s": round(after[0]["time"] - fault, 1) if after else None,
            "that_step": after[0]["step"] if after else None,
            "its_baseline_step_s": round(base_step_s.get(after[0]["step"]) or 0, 1) if after else None,
            "recovery_s": round(last.get("faults/recovery_s", 0.0), 1),
            "wall_s": round(wall, 1),
            "wall_over_baseline_s": round(wall - base_wall, 1),
            "steps_recomputed": recomputed(last, driver_kill, args.save_every),
            "steps_lost": lost,
            "rows_per_step_ok": [r["step"] for r in got] == list(range(args.steps + 1)),
        }
        print(json.dumps(result), flush=True)
        table.append(result)
    cols = list(table[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in table:
        print("| " + " | ".join("-" if r[c] is None else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
