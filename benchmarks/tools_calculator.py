"""Multi-turn tool use on a CPU: SmolLM2-135M-Instruct learns to use a calculator for three-digit sums.

    python benchmarks/tools_calculator.py                      # both arms, seed 0, 20 steps
    python benchmarks/tools_calculator.py --no-run --markdown  # summarise the runs already under --out

The task (written by this script under --out, seeded): "What is 528 + 677?" with both operands in 100..999, a sum
the 135M model gets right about 5% of the time by itself. Each prompt is a chat with one worked example before the
question (the user asks 12 + 34, the assistant answers "<calculator>12 + 34</calculator><result>46</result> The answer
is 46."), so the model sees the tag call syntax once; no other instruction is added (rollout.tool_instructions=null).
The reward is the built-in `arith` (the last integer of the whole trajectory, tool output included, equals the sum).

The arms differ only in the advantage estimator, on the same data, seed, steps and sizes (the quickstart's: 8
prompts x 8 answers, lr 2e-5 decaying linearly, one update per step):

- `grpo`: group-normalised advantages (arXiv 2402.03300);
- `stratified`: Stratified GRPO (arXiv 2510.06214), strata = the trajectory's tool-call count, alpha 0.6;
- `no_tools` (run it with --arms no_tools): `grpo` on the same prompts without the calculator, for scale.

Reported per arm: held-out greedy accuracy and tool-call rate at every eval (step 0 is the model before training),
the sampled training accuracy and tool-call rate per step, generated tokens, wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import cpu_model, train_cli  # noqa: E402

EXAMPLE = [{"role": "user", "content": "What is 12 + 34?"},
           {"role": "assistant", "content": "<calculator>12 + 34</calculator><result>46</result> The answer is 46."}]
TOOLS = ["rollout.tools=[calculator]", "rollout.tool_format=tag", "rollout.tool_instructions=null"]
ARMS = {
    "grpo": [*TOOLS, "algorithm.advantage.name=grpo"],
    "stratified": [*TOOLS, "algorithm.advantage.name=stratified", "algorithm.advantage.strata_source=tool_calls"],
    "no_tools": ["algorithm.advantage.name=grpo"],  # the same prompts (the worked example too), no calculator
}
DEFAULT_ARMS = ["grpo", "stratified"]


def write_task(out: Path, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """train.jsonl and eval.jsonl (disjoint questions), chat prompts with the worked example first."""
    rng = random.Random(1234)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < n_train + n_eval:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({"prompt": [*EXAMPLE, {"role": "user", "content": f"What is {a} + {b}?"}], "answer": str(a + b)})
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for path, part in zip(paths, (rows[:n_train], rows[n_train:])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def run_arm(arm: str, seed: int, args: argparse.Namespace, data: tuple[Path, Path], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"model.path={args.model}", f"data.train={data[0]}", f"data.eval={data[1]}",
                 f"data.eval_size={args.eval_size}", "data.prompt_suffix=''", "reward.fns=[arith]",
                 f"rollout.max_turns={args.max_turns}", f"rollout.max_new_tokens={args.max_new_tokens}",
                 f"trainer.total_steps={args.steps}", f"trainer.eval_every={args.eval_every}", f"trainer.seed={seed}",
                 f"trainer.output_dir={out}", "trainer.resume=never", "trainer.save_every=0",
                 "trainer.checkpoint_hf=false", "logging.console=plain", "logging.wandb_mode=disabled", *ARMS[arm]]
    t0 = time.perf_counter()
    records = train_cli(overrides, out, f"arm {arm} (seed {seed})")
    result = {"arm": arm, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1), "evals": [], "train": []}
    tokens = 0
    for r in records:
        tokens = r.get("perf/generated_tokens_total", tokens)
        if "eval/accuracy" in r:
            result["evals"].append({"step": r["step"], "accuracy": r["eval/accuracy"],
                                    "tool_call_rate": r.get("eval/tool_call_rate"), "tokens": tokens})
        if r["step"] > 0 and "reward/mean" in r:
            result["train"].append({"step": r["step"], "accuracy": r.get("reward/acc", r["reward/mean"]),
                                    "tool_call_rate": r.get("rollout/tool_call_rate"),
                                    "tool_calls_mean": r.get("rollout/tool_calls_mean"),
                                    "tool_error_rate": r.get("rollout/tool_error_rate"),
                                    "step_s": r.get("perf/step_time_s"), "tokens": tokens})
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    steps = sorted({e["step"] for r in results for e in r["evals"]})
    head = "| arm | seed | " + " | ".join(f"step {s}" for s in steps) + " |"
    lines = ["Held-out greedy accuracy (tool-call rate) at each eval:", "", head,
             "|---|---|" + "---|" * len(steps)]
    for r in results:
        cells = {e["step"]: f"{e['accuracy']:.3f}" + (f" ({e['tool_call_rate']:.2f})" if e["tool_call_rate"] is not None
                                                      else "") for e in r["evals"]}
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells.get(s, "-") for s in steps) + " |")
    lines += ["", "Sampled training accuracy and tool-call rate (mean over the steps of each third of the run), "
                  "generated tokens and wall time:", "",
              "| arm | seed | train acc, thirds | tool-call rate, thirds | tool errors | tokens | wall |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["train"]
        k = max(len(t) // 3, 1)
        thirds = [t[:k], t[k:2 * k], t[2 * k:]]

        def avg(part, key):
            vals = [x[key] for x in part if x.get(key) is not None]
            return f"{statistics.fmean(vals):.2f}" if vals else "-"

        errs = [x["tool_error_rate"] for x in t if x.get("tool_error_rate") is not None]
        lines.append(f"| {r['arm']} | {r['seed']} | {' / '.join(avg(p, 'accuracy') for p in thirds)} | "
                     f"{' / '.join(avg(p, 'tool_call_rate') for p in thirds)} | "
                     f"{f'{statistics.fmean(errs):.2f}' if errs else '-'} | {t[-1]['tokens'] if t else 0} | "
                     f"{r['wall_s']:.0f} s |")
    first = range(1, 11)
    lines += ["", "Sampled training accuracy (tool-call rate) of steps 1-10:", "",
              "| arm | seed | " + " | ".join(str(s) for s in first) + " |", "|---|---|" + "---|" * len(first)]
    for r in results:
        by = {x["step"]: x for x in r["train"]}
        cell = (lambda x: f"{x['accuracy']:.2f} ({x['tool_call_rate']:.2f})" if x.get("tool_call_rate") is not None
                else f"{x['accuracy']:.2f}")
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cell(by[s]) if s in by else "-" for s in first) + " |")
    lines += ["", f"`{' '.join(sys.argv)}` on {cpu_model()}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="the whole trajectory's budget, tool tokens too")
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="outputs/tools_calculator")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--no-run", action="store_true", help="summarise the runs already under --out")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    data = None if args.no_run else write_task(out / "data", n_train=2000, n_eval=args.eval_size)
    results = []
    for arm in args.arms:
        for seed in args.seeds:
            run_dir = out / arm / f"seed{seed}"
            if (run_dir / "result.json").exists():
                results.append(json.loads((run_dir / "result.json").read_text()))
            elif not args.no_run:
                results.append(run_arm(arm, seed, args, data, run_dir))
    print(json.dumps(results, indent=1) if not args.markdown else markdown(results, args))


if __name__ == "__main__":
    main()
