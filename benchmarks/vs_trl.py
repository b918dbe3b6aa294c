"""End-to-end GRPO step speed: our CLI against TRL's GRPOTrainer on the same task, model, sizes and steps.

    pip install -e ".[bench]"            # TRL (GRPOTrainer) for the TRL arms
    python benchmarks/vs_trl.py [--steps 6] [--warmup 1] [--rounds 1] [--arms ours_fp32 ours_bf16 trl_default ...]
                                [--model smollm2-135m-instruct] [--out outputs/vs_trl] [--markdown]

Every arm is its own process, run one after the other (never two at once, so each has the machine); with
`--rounds R` the whole arm list runs R times round-robin (a VM whose speed drifts by ±10% over half an hour
then slows every arm alike) and each arm's kept steps are pooled:
  - ours_<dtype>: `python -m launch.train configs/quickstart.yaml` (a local Ray cluster: one HF rollout worker,
    one DeepSpeed trainer rank, a reward worker) with `model.dtype=<dtype>` (auto, float32, bfloat16);
  - ours_auto_separate: ours_auto with `trainer.share_prompts=false` (the shared-prompt lever off);
  - trl_default: TRL's GRPOTrainer with its own defaults for everything not shared (bf16=True unless the
    machine cannot, per_device_train_batch_size 8 x gradient_accumulation_steps 8 = one generation batch of
    8 prompts x 8 answers per optimizer step, the HF generate() path);
  - trl_fp32: the same with bf16=False;
  - trl_bs64: fp32, per_device_train_batch_size 64 and no accumulation (one forward/backward per step: the
    fastest TRL setting found on a 2-core CPU).
Shared settings, stated once: the model, the built-in `arith` prompts rendered through the model's chat
template with the quickstart's suffix " Answer with just the number.", the `arith` reward (last integer ==
answer), 8 prompts x 8 answers per step, at most 32 new tokens, temperature 1 and top_p 1, lr 2e-5, no KL
term (beta 0), one optimizer update per step, no evaluation and no checkpoints inside the timed steps, the
same torch thread count (every core). Each arm runs `--warmup + --steps` steps; the first `--warmup` are
dropped (compile caches, first-touch page faults, allocator growth) and the rest are summarised as median and
spread (min-max) of the step time, and completion tokens per second of step time (generated tokens / step
seconds, summed over the kept steps). Ratios are against `trl_default` and against the fastest TRL arm. Our step-time split comes from the
run's own `perf/*` metrics (logged every step by launch/loop.py and the trainer); TRL's generation time from
timing its generate call. Peak and per-step RSS of the trainer and rollout actors (ours) and of the TRL
process; `rss_slope_mb_per_step` is the least-squares slope over the kept steps, `rss_slope_late_mb_per_step`
over their second half (RSS climbs to the working set's high-water mark in the first steps, then must stay flat).
Prints one JSON object per arm and, with --markdown, the table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUFFIX = " Answer with just the number."
PROMPTS, GROUP, MAX_NEW, LR = 8, 8, 32, 2e-5
OUR_ARMS = {"ours_auto": ("auto", []), "ours_fp32": ("float32", []), "ours_bf16": ("bfloat16", []),
            # the shared-prompt lever off: one sequence per training row (what every peer does)
            "ours_auto_separate": ("auto", ["trainer.share_prompts=false"])}
TRL_ARMS = {
    "trl_default": {},
    "trl_fp32": {"bf16": False},
    "trl_bs64": {"bf16": False, "per_device_train_batch_size": PROMPTS * GROUP, "gradient_accumulation_steps": 1},
}
SPLIT = ("generate", "reward", "old_logprobs", "ref_logprobs", "forward", "backward", "optimizer", "sync", "eval")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def threads() -> int:
    return len(os.sched_getaffinity(0))


def slope(ys: list[float]) -> float:
    if len(ys) < 2:
        return 0.0
    xs = range(len(ys))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summarize(name: str, rounds: list[list[dict]], warmup: int, extra: dict) -> dict:
    """`rounds`: per round (one process each), one dict per step with step_s, tokens and optional split/RSS
    keys. The first `warmup` steps of every round are dropped; the rest are pooled."""
    kept_rounds = [steps[warmup:] for steps in rounds]
    kept = [s for steps in kept_rounds for s in steps]
    if not all(kept_rounds):
        raise SystemExit(f"arm {name!r}: a round had no step after the {warmup} warm-up step(s)")
    times = [s["step_s"] for s in kept]
    out = {
        "arm": name,
        "rounds": len(rounds),
        "steps_kept": len(kept),
        "step_s_median": round(statistics.median(times), 2),
        "step_s_min": round(min(times), 2),
        "step_s_max": round(max(times), 2),
        "completion_tokens_per_step": round(statistics.fmean(s["tokens"] for s in kept), 1),
        "tokens_per_s": round(sum(s["tokens"] for s in kept) / sum(times), 2),
        "tokens_per_s_per_round": [round(sum(s["tokens"] for s in r) / sum(s["step_s"] for s in r), 2)
                                   for r in kept_rounds],
        "split_s_median": {k: round(statistics.median(s["split"][k] for s in kept), 2)
                           for k in SPLIT if all(k in s.get("split", {}) for s in kept)},
    }
    for who in ("trainer", "rollout", "process"):
        per_round = [[s[f"{who}_rss_mb"] for s in r if f"{who}_rss_mb" in s] for r in kept_rounds]
        if any(per_round):
            out[f"{who}_rss_mb"] = [round(x) for x in per_round[-1]]  # the last round's, step by step
            out[f"{who}_peak_rss_mb"] = round(max(s[f"{who}_peak_rss_mb"] for s in kept if f"{who}_peak_rss_mb" in s))
            out[f"{who}_rss_slope_mb_per_step"] = round(max(slope(r) for r in per_round), 1)  # the steepest round
            # the same over each round's second half: RSS climbs to the working set's high-water mark in the first
            # steps (allocator caches), then must stay flat
            out[f"{who}_rss_slope_late_mb_per_step"] = round(max(slope(r[len(r) // 2:]) for r in per_round), 1)
    return {**out, **extra}


# -- our CLI ---------------------------------------------------------------------------------------
def train_cli(overrides: list[str], out: Path, what: str) -> list[dict]:
    """`python -m launch.train configs/quickstart.yaml <overrides>` with its output in <out>/train.log; the run's
    metrics.jsonl records in step order (SystemExit naming `what` and the log when it fails)."""
    cmd = [sys.executable, "-m", "launch.train", "configs/quickstart.yaml", *overrides]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"{what} failed (exit {rc}); see {out / 'train.log'}")
    return sorted((json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()),
                  key=lambda r: r["step"])


def run_ours(name: str, args: argparse.Namespace, out: Path) -> tuple[list[dict], dict]:
    out.mkdir(parents=True, exist_ok=True)
    total = args.warmup + args.steps
    overrides = [f"model.path={args.model}", f"model.dtype={OUR_ARMS[name][0]}", f"trainer.output_dir={out}",
                 f"trainer.total_steps={total}", "trainer.resume=never", "trainer.save_every=0",
                 "trainer.eval_every=0", "data.eval=null", f"trainer.seed={args.seed}",
                 f"trainer.train_prompts={PROMPTS}", f"rollout.group_size={GROUP}",
                 f"rollout.max_new_tokens={MAX_NEW}", "rollout.temperature=1.0", "rollout.top_p=1.0",
                 f"trainer.lr={LR}",
                 "logging.console=plain", "logging.wandb_mode=disabled", *OUR_ARMS[name][1], *args.overrides]
    t0 = time.perf_counter()
    records = train_cli(overrides, out, f"arm {name!r}")
    steps = []
    for r in sorted((r for r in records if r["step"] > 0), key=lambda r: r["step"]):
        split = {k: r[f"perf/{k}_s"] for k in SPLIT if f"perf/{k}_s" in r}
        steps.append({"step_s": r["perf/step_time_s"], "tokens": r["perf/generated_tokens"], "split": split,
                      **{k: r[f"perf/{k}"] for k in ("trainer_rss_mb", "trainer_peak_rss_mb", "rollout_rss_mb",
                                                     "rollout_peak_rss_mb") if f"perf/{k}" in r}})
    precision = next((line.split("precision:", 1)[1].strip() for line in (out / "train.log").read_text().splitlines()
                      if "precision:" in line), OUR_ARMS[name][0])
    parity = [r["rollout/logprob_diff_mean"] for r in records if "rollout/logprob_diff_mean" in r]
    return steps, {"precision": precision, "wall_s": round(time.perf_counter() - t0, 1),
                   "logprob_diff_mean": round(statistics.fmean(parity), 5) if parity else None}


# -- TRL -------------------------------------------------------------------------------------------
def run_trl(name: str, args: argparse.Namespace, out: Path) -> tuple[list[dict], dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--trl-child", name, "--out", str(out), "--model", args.model,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"arm {name!r} failed (exit {rc}); see {out / 'train.log'}")
    steps = json.loads((out / "steps.json").read_text())
    return steps["steps"], {"precision": steps["precision"], "wall_s": round(time.perf_counter() - t0, 1)}


def trl_child(name: str, args: argparse.Namespace) -> None:
    """Runs inside its own process: one TRL GRPOTrainer run, per-step timings to <out>/steps.json."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from launch.models import resolve_model
    from rl.memory import process_memory_mb
    from reward.verifiers import arith_reward
    from rollout.data import make_arith

    torch.set_num_threads(threads())
    path = resolve_model(args.model)
    rows = make_arith(4096, split="train")  # the prompts our CLI trains on (TRL shuffles them with its seed)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"] + SUFFIX}], "answer": r["answer"]}
                              for r in rows])

    def arith(completions, answer, **_):
        return [arith_reward("", c[0]["content"] if isinstance(c, list) else c, answer=a)["reward"]
                for c, a in zip(completions, answer)]

    overrides = dict(TRL_ARMS[name])
    config = GRPOConfig(
        output_dir=str(Path(args.out) / "trl"), max_steps=args.warmup + args.steps, learning_rate=LR,
        per_device_train_batch_size=overrides.pop("per_device_train_batch_size", PROMPTS),
        gradient_accumulation_steps=overrides.pop("gradient_accumulation_steps", GROUP),
        num_generations=GROUP, max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, beta=0.0,
        num_iterations=1, logging_steps=1, save_strategy="no", report_to="none", seed=args.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, **overrides)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=arith, args=config, train_dataset=data,
                          processing_class=tokenizer)

    generate_s = [0.0]
    inner = trainer._generate_single_turn

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            generate_s[0] += time.perf_counter() - t

    trainer._generate_single_turn = timed_generate
    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_log(self, _args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs and steps and "tokens" not in steps[-1]:
                steps[-1]["tokens"] = logs["completions/mean_length"] * PROMPTS * GROUP

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            mem = process_memory_mb()
            steps.append({"step_s": now - self.t, "split": {"generate": generate_s[0]},
                          "process_rss_mb": mem["rss_mb"], "process_peak_rss_mb": mem["peak_rss_mb"]})
            generate_s[0] = 0.0
            self.t = now

    trainer.add_callback(Clock())
    trainer.train()
    for s in steps:
        s.setdefault("tokens", float("nan"))
    precision = "bfloat16 (autocast)" if config.bf16 else "float32"
    (Path(args.out) / "steps.json").write_text(json.dumps({"precision": precision, "steps": steps}))


# -- report ----------------------------------------------------------------------------------------
def markdown(results: list[dict], args: argparse.Namespace) -> str:
    base = next((r for r in results if r["arm"] == "trl_default"), None)
    trl = [r for r in results if r["arm"] in TRL_ARMS]
    best = max(trl, key=lambda r: r["tokens_per_s"]) if trl else None
    lines = [f"CPU: {cpu_model()}, {threads()} threads; torch {_version('torch')}, TRL {_version('trl')}, "
             f"transformers {_version('transformers')}; {args.rounds} round(s) of {args.warmup} warm-up + "
             f"{args.steps} timed steps per arm, round-robin.",
             "",
             "| arm | precision | step s (median, min-max) | completion tok/step | tok/s (per round) | vs trl_default | "
             f"vs best TRL ({best['arm'] if best else '-'}) | peak RSS MB (trainer / rollout or process) | "
             "RSS slope MB/step, all kept steps (second half) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        vs_best = f"{r['tokens_per_s'] / best['tokens_per_s']:.2f}x" if best else "-"
        if "trainer_peak_rss_mb" in r:
            peak = f"{r['trainer_peak_rss_mb']} / {r.get('rollout_peak_rss_mb', '-')}"
            grow = (f"{r['trainer_rss_slope_mb_per_step']} / {r.get('rollout_rss_slope_mb_per_step', '-')} (late: "
                    f"{r['trainer_rss_slope_late_mb_per_step']} / {r.get('rollout_rss_slope_late_mb_per_step', '-')})")
        else:
            peak = str(r.get("process_peak_rss_mb", "-"))
            grow = f"{r.get('process_rss_slope_mb_per_step', '-')} (late: {r.get('process_rss_slope_late_mb_per_step', '-')})"
        lines.append(f"| {r['arm']} | {r['precision']} | {r['step_s_median']} ({r['step_s_min']}-{r['step_s_max']}) "
                     f"| {r['completion_tokens_per_step']} | {r['tokens_per_s']} ({', '.join(map(str, r['tokens_per_s_per_round']))}) "
                     f"| {ratio} | {vs_best} | {peak} | {grow} |")
    lines += ["", "Step-time split (median seconds per step):", "",
              "| arm | " + " | ".join(SPLIT) + " |", "|---|" + "---|" * len(SPLIT)]
    for r in results:
        lines.append(f"| {r['arm']} | " + " | ".join(str(r["split_s_median"].get(k, "-")) for k in SPLIT) + " |")
    return "\n".join(lines)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", nargs="+", default=["ours_auto", "ours_auto_separate", "ours_fp32", "ours_bf16", "trl_default",
                                                  "trl_fp32", "trl_bs64"],
                    choices=[*OUR_ARMS, *TRL_ARMS])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per arm (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps of each run left out of the summary")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the arm list this many times, round-robin, and pool each arm's kept steps")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model alias or local HF directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/vs_trl")
    ap.add_argument("--markdown", action="store_true", help="also print the docs/benchmarks.md table")
    ap.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for our arms only (e.g. to try a lever)")
    args = ap.parse_args()
    if args.trl_child:
        return trl_child(args.trl_child, args)
    if any(a in TRL_ARMS for a in args.arms):
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("the TRL arms need TRL: pip install -e '.[bench]' (or choose --arms ours_*)") from None
    arms = list(dict.fromkeys(args.arms))
    steps: dict[str, list[list[dict]]] = {name: [] for name in arms}
    extra: dict[str, dict] = {}
    for k in range(args.rounds):  # round-robin: a machine that drifts slows every arm alike
        for name in arms:
            out = Path(args.out) / (name if args.rounds == 1 else f"{name}.round{k}")
            run_steps, info = (run_ours if name in OUR_ARMS else run_trl)(name, args, out)
            steps[name].append(run_steps)
            extra[name] = {**info, "wall_s": round(extra.get(name, {}).get("wall_s", 0.0) + info["wall_s"], 1)}
            print(json.dumps({"round": k, "arm": name, "done": True}), flush=True)
    results = [summarize(name, steps[name], args.warmup, extra[name]) for name in arms]
    for result in results:
        print(json.dumps(result), flush=True)
    if args.markdown:
        print(markdown(results, args))


if __name__ == "__main__":
    main()
