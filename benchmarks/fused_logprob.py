"""Peak memory and time of forward+backward: fused ops vs the naive path vs Liger's GRPO loss (CPU or GPU).

    python benchmarks/fused_logprob.py                                   # full grid, JSON lines to stdout
    python benchmarks/fused_logprob.py --vocab 151936 --tokens 2048 --hidden 896 --methods fused_loss liger

Methods (all fp32 unless --dtype, hidden and weight both require grad, temperature 0.7):
- logprob:    rl.ops.token_logprobs_entropy (logprob + entropy), backward of Σ g1·logp + g2·H
- naive:      the same with materialised logits: log_softmax(h @ W.T / T), gather, -(p·log p).sum
- fused_loss: rl.ops.fused_policy_loss, token-mean, eps 0.2/0.2, k3 KL (coef 0.04) to given ref logprobs
- liger:      liger_kernel LigerFusedLinearGRPOLoss with the same loss (loss_type="dapo", beta=0.04,
              ref_per_token_logps given, compiled=False), sequences of 1024 tokens, its default chunk_size=1

Every case runs in its own fresh subprocess. Memory = peak RSS growth over the RSS after the inputs are
built (Linux VmHWM, reset through /proc/self/clear_refs just before the timed call; CUDA: peak allocated
bytes over the baseline). Time = wall clock of one forward+backward (the min over --repeats).
Naive cases whose predicted memory exceeds --max-gb are not run: a JSON line with "skipped" and the
predicted size is printed instead, so no number is reported that was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

METHODS = ("logprob", "naive", "fused_loss", "liger")
NAIVE_LOGITS_COPIES = 5.0
"""Predicted naive peak = this many (N, V) fp32 tensors + dW (4.2-4.9 measured here, more at larger N)."""
SEQ_LEN = 1024
TEMPERATURE = 0.7


def predicted_naive_gb(n: int, v: int, h: int) -> float:
    return (NAIVE_LOGITS_COPIES * n * v * 4 + v * h * 4) / 1e9


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def _inputs(n: int, v: int, h: int, dtype, device):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(dtype=dtype, device=device).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.02).to(dtype=dtype, device=device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    per_tok = {k: (torch.randn(n, generator=g) * s + c).to(device) for k, s, c in
               (("old", 0.3, -3.0), ("ref", 0.3, -3.0), ("adv", 1.0, 0.0), ("g1", 1.0, 0.0), ("g2", 1.0, 0.0))}
    from rl.loss_config import LossConfig

    per_tok["cfg"] = LossConfig(eps_low=0.2, eps_high=0.2, kl_coef=0.04)  # built (term probed) before any timing
    return hidden, weight, targets, per_tok


def _step(method: str, hidden, weight, targets, t: dict) -> None:
    """One forward+backward of `method`."""
    import torch

    if method == "logprob":
        from rl.ops import token_logprobs_entropy

        lp, ent = token_logprobs_entropy(hidden, weight, targets, temperature=TEMPERATURE)
        (lp * t["g1"] + ent * t["g2"]).sum().backward()
    elif method == "naive":
        logp_all = torch.log_softmax((hidden @ weight.t()).float() / TEMPERATURE, dim=-1)  # (N, V)
        lp = logp_all.gather(-1, targets[:, None])[:, 0]
        ent = -(logp_all.exp() * logp_all).sum(-1)
        (lp * t["g1"] + ent * t["g2"]).sum().backward()
    elif method == "fused_loss":
        from rl.loss_config import LossInputs
        from rl.ops import fused_policy_loss

        loss, _ = fused_policy_loss(hidden, weight, targets, LossInputs(t["old"], t["adv"], ref_logprobs=t["ref"]),
                                    t["cfg"], temperature=TEMPERATURE)
        loss.backward()
    elif method == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        n, h = hidden.shape
        b = max(1, n // SEQ_LEN)
        loss_fn = LigerFusedLinearGRPOLoss(beta=0.04, compiled=False, use_ref_model=True, epsilon_low=0.2,
                                           epsilon_high=0.2, loss_type="dapo", temperature=TEMPERATURE)
        shape = (b, n // b)
        adv = t["adv"].view(shape)[:, 0].contiguous()  # Liger takes one advantage per sequence
        loss, _ = loss_fn(hidden.view(b, n // b, h), weight, targets.view(shape),
                          torch.ones(shape, device=hidden.device), adv,
                          ref_per_token_logps=t["ref"].view(shape), old_per_token_logps=t["old"].view(shape))
        loss.backward()
    else:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def run_case(method: str, n: int, v: int, h: int, dtype_name: str, device: str, repeats: int) -> dict:
    """Measure one case in this process (called in a fresh subprocess by main)."""
    import gc

    import torch

    dtype = getattr(torch, dtype_name)
    hidden, weight, targets, t = _inputs(n, v, h, dtype, device)
    cuda = device.startswith("cuda")
    times, cpu, peak = [], [], 0
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss_bytes("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        t0, c0 = time.perf_counter(), time.process_time()
        _step(method, hidden, weight, targets, t)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        now = torch.cuda.max_memory_allocated() if cuda else _rss_bytes("VmHWM")
        peak = max(peak, now - base)
    return {"method": method, "N": n, "V": v, "H": h, "dtype": dtype_name, "device": device,
            "peak_gb": round(peak / 1e9, 3), "time_s": round(min(times), 3), "cpu_s": round(min(cpu), 3),
            "repeats": repeats,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--vocab", nargs="+", type=int, default=[49152, 151936])
    ap.add_argument("--tokens", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--hidden", nargs="+", type=int, default=[576, 896])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per subprocess (min reported)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="fresh subprocesses per case, methods interleaved; a summary line per shape takes the "
                         "min time and the max peak over rounds (the machine may be shared)")
    ap.add_argument("--max-gb", type=float, default=10.0, help="skip naive cases predicted above this peak")
    ap.add_argument("--case", nargs=4, metavar=("METHOD", "N", "V", "H"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        m, n, v, h = args.case
        print(json.dumps(run_case(m, int(n), int(v), int(h), args.dtype, args.device, args.repeats)), flush=True)
        return
    for v in args.vocab:
        for n in args.tokens:
            for h in args.hidden:
                rows = []
                for _ in range(args.rounds):
                    for m in args.methods:
                        rows.append(_spawn(m, n, v, h, args))
                        print(json.dumps(rows[-1]), flush=True)
                print(json.dumps(summarize(rows, n, v, h)), flush=True)


def summarize(rows: list[dict], n: int, v: int, h: int) -> dict:
    """Per method: min time / cpu and max peak over rounds; ratios logprob/naive and fused_loss/liger."""
    best: dict[str, dict] = {}
    for r in rows:
        if "peak_gb" not in r:
            continue
        b = best.setdefault(r["method"], {"time_s": r["time_s"], "cpu_s": r["cpu_s"], "peak_gb": r["peak_gb"]})
        b["time_s"], b["cpu_s"] = min(b["time_s"], r["time_s"]), min(b["cpu_s"], r["cpu_s"])
        b["peak_gb"] = max(b["peak_gb"], r["peak_gb"])
    out: dict = {"summary": True, "N": n, "V": v, "H": h, **{m: b for m, b in best.items()}}
    for num, den in (("logprob", "naive"), ("fused_loss", "liger")):
        if num in best and den in best:
            out[f"{num}/{den}"] = {k: round(best[num][k] / best[den][k], 3) for k in ("time_s", "cpu_s", "peak_gb")}
    return out


def _spawn(m: str, n: int, v: int, h: int, args: argparse.Namespace) -> dict:
    pred = predicted_naive_gb(n, v, h)
    if m == "naive" and pred > args.max_gb:
        return {"method": m, "N": n, "V": v, "H": h, "skipped": f"predicted {pred:.1f} GB > --max-gb {args.max_gb}",
                "predicted_gb": round(pred, 1)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, os.path.abspath(__file__), "--case", m, str(n), str(v), str(h), "--dtype", args.dtype,
           "--device", args.device, "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"method": m, "N": n, "V": v, "H": h, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
