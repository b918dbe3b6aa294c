"""Reward scoring throughput, and what process isolation costs per call.

    python benchmarks/reward_throughput.py [--rows 600] [--repeats 3] [--workers 1 2 4] [--levels full userns rlimits off]
        [--isolations call worker]

Measures, for the `math` verifier (math-verify) and a trivial function:
  - in_process: the plain function called in this process (no isolation), µs per call;
  - runner: RewardRunner.score on a batch with 1, 2, 4 workers at the strongest level given, samples/s;
  - isolation_overhead: µs per call with 1 worker at each sandbox level and each `isolation`
    (`call`: a process forked per call from the worker's zygote, the default; `worker`: calls run in
    the worker process) minus µs per call in process, i.e. the price of pipes, pickling, the per-call
    fork and the per-call cleanup. Levels this machine cannot reach are reported as such and skipped.
  - fork_anatomy: where a per-call process's time goes, without the pool: the function's own time
    inside a child forked from a warmed, gc-frozen process against the same call in that process
    (copy-on-write faults on the pages the call touches), and the bare fork-to-first-byte time.
Each figure is the median of `--repeats` timed batches after a warm-up batch. Prints one JSON
object per line. Results are recorded in docs/benchmarks.md ("Reward throughput").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRIVIAL_SPEC = f"{os.path.abspath(__file__)}:trivial"


def trivial(prompt: str, completion: str, *, answer: str, **sample: object) -> float:
    return float(completion == answer)


def math_rows(n: int) -> list[dict]:
    """Completions in the shapes the verifier meets: boxed LaTeX, GSM8K '####', a last number."""
    shapes = [
        lambda a: (f"Adding the halves gives $\\boxed{{\\frac{{{a}}}{{2}}}}$.", f"{a}/2"),
        lambda a: (f"She has {a} apples left.\n#### {a}", f"{a}"),
        lambda a: (f"So the answer is {a}.", f"{a}.0"),
        lambda a: (f"Thus $x = \\boxed{{{a}}}$", f"{a + 1}"),  # wrong on purpose
    ]
    rows = []
    for i in range(n):
        completion, answer = shapes[i % len(shapes)](i)
        rows.append({"prompt": f"q{i}", "completion": completion, "answer": answer})
    return rows


def trivial_rows(n: int) -> list[dict]:
    return [{"prompt": f"q{i}", "completion": str(i), "answer": str(i)} for i in range(n)]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def bench_in_process(name: str, spec: str, rows: list[dict], repeats: int) -> float:
    from reward import resolve_specs

    (fn,) = resolve_specs([spec])
    for row in rows[:20]:
        fn(row)  # warm-up (imports, caches)
    seconds = timed(lambda: [fn(row) for row in rows], repeats)
    us = 1e6 * seconds / len(rows)
    emit({"bench": "in_process", "fn": name, "calls": len(rows), "us_per_call": round(us, 1)})
    return us


def bench_runner(name: str, spec: str, rows: list[dict], workers: int, sandbox: str, repeats: int,
                 isolation: str = "call") -> float | None:
    from reward import RewardRunner, RewardWorkerError

    spec = {"fn": spec, "isolation": isolation}
    start = time.perf_counter()
    try:
        RewardRunner([spec], timeout_s=30.0, num_workers=1, sandbox=sandbox).close()
    except RewardWorkerError as exc:
        emit({"bench": "runner", "fn": name, "sandbox": sandbox, "unreachable": str(exc).strip().splitlines()[-1]})
        return None
    start = time.perf_counter()
    with RewardRunner([spec], timeout_s=30.0, num_workers=workers, sandbox=sandbox) as runner:
        startup_s = time.perf_counter() - start
        runner.score(rows[: 4 * workers])  # warm-up
        results: list = []
        seconds = timed(lambda: results.__setitem__(slice(None), runner.score(rows)), repeats)
        level = runner.sandbox_level
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.status != "ok"][:3]
    us = 1e6 * seconds / len(rows)
    emit({"bench": "runner", "fn": name, "workers": workers, "sandbox": level, "isolation": isolation,
          "rows": len(rows),
          "samples_per_s": round(len(rows) / seconds, 1), "us_per_call": round(us, 1), "startup_s": round(startup_s, 2)})
    return us


def bench_fork_anatomy(name: str, spec: str, rows: list[dict]) -> None:
    import gc

    from reward import resolve_specs

    (fn,) = resolve_specs([spec])
    warmup = getattr(fn.fn, "warmup", None)
    if callable(warmup):
        warmup()
    for row in rows[:20]:
        fn(row)
    gc.collect()
    gc.freeze()
    read, write = os.pipe()
    in_parent, in_child, first_byte = [], [], []
    for row in rows[:200]:  # first, without a fork in between (after one, the parent's writes fault too)
        start = time.perf_counter()
        fn(row)
        in_parent.append(time.perf_counter() - start)
    for row in rows[:200]:
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(write, b"x")
            began = time.perf_counter()
            fn(row)
            os.write(write, f"{time.perf_counter() - began:.9f}".encode().ljust(32))
            os._exit(0)
        os.read(read, 1)
        first_byte.append(time.perf_counter() - start)
        in_child.append(float(os.read(read, 32)))
        os.waitpid(pid, 0)
    os.close(read)
    os.close(write)
    gc.unfreeze()
    emit({"bench": "fork_anatomy", "fn": name, "calls": len(in_parent),
          "us_call_in_process": round(1e6 * statistics.median(in_parent), 1),
          "us_call_in_forked_child": round(1e6 * statistics.median(in_child), 1),
          "us_fork_to_first_byte": round(1e6 * statistics.median(first_byte), 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--levels", nargs="+", default=["full", "userns", "rlimits", "off"])
    parser.add_argument("--isolations", nargs="+", default=["call", "worker"])
    args = parser.parse_args()
    emit({"bench": "env", "cpus": os.cpu_count(), "python": sys.version.split()[0], "euid": os.geteuid()})
    for name, spec, rows in (("trivial", TRIVIAL_SPEC, trivial_rows(args.rows)), ("math", "math", math_rows(args.rows))):
        in_process_us = bench_in_process(name, spec, rows, args.repeats)
        bench_fork_anatomy(name, spec, rows)
        isolated_us = {}
        for workers in args.workers:  # scaling at the strongest level, with the default isolation
            us = bench_runner(name, spec, rows, workers, sandbox=args.levels[0], repeats=args.repeats,
                              isolation=args.isolations[0])
            if workers == 1:
                isolated_us[args.levels[0], args.isolations[0]] = us
        for level in args.levels:
            for isolation in args.isolations:
                if (level, isolation) not in isolated_us:
                    isolated_us[level, isolation] = bench_runner(name, spec, rows, 1, sandbox=level,
                                                                 repeats=args.repeats, isolation=isolation)
        for (level, isolation), us in isolated_us.items():
            if us is not None:
                emit({"bench": "isolation_overhead", "fn": name, "sandbox": level, "isolation": isolation, "workers": 1,
                      "us_per_call_in_process": round(in_process_us, 1), "us_per_call_isolated": round(us, 1),
                      "overhead_us": round(us - in_process_us, 1)})


if __name__ == "__main__":
    main()
