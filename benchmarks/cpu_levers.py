"""The CPU levers behind the end-to-end numbers, each measured side by side with what it replaced.

    python benchmarks/cpu_levers.py [--only gemm adamw generate train] [--repeats 3] [--model smollm2-135m-instruct]

Sections (one JSON line per measurement; every case in one process, run one after the other):
- gemm:     fp32 vs bf16 matrix multiply GFLOP/s at the model's shapes (M tokens x K -> N), on every core.
            Decides `model.dtype=auto` on a CPU (rl/precision.py): bf16 only pays where the matrix units
            multiply it natively (AMX).
- adamw:    one torch AdamW step over the model's parameters: the per-tensor loop (torch's CPU default),
            foreach, and fused (what the trainer uses).
- generate: 8 prompts x 8 samples, at most 32 new tokens, T=1, top_p=1 (the quickstart's rollout):
            transformers' `generate()` (num_return_sequences=8: every copy of a prompt is prefilled, finished
            rows stay in the batch, as in TRL's CPU path) vs our HF engine (rollout/hf_engine.py: each prompt
            prefilled once, finished rows leave the batch). Reports generated tokens per second.
- train:    one forward+backward of the token-mean policy loss over 64 quickstart-shaped samples (8 prompts of
            45 tokens x 8 answers of 8-32 tokens): one sequence per row vs shared-prompt rows
            (`trainer.share_prompts`, rl/batch.py collate_shared).
Time = the median of --repeats runs after one untimed warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_trl import cpu_model  # noqa: E402

PROMPTS, GROUP, MAX_NEW, PROMPT_LEN = 8, 8, 32, 45


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch page faults, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def bench_gemm(config, repeats: int) -> None:
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    for m, k, n in [(64, h, h), (64, h, inter), (64, h, vocab), (1024, h, inter), (4096, h, h), (2048, h, 2048)]:
        row = {"section": "gemm", "shape": [m, k, n]}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            reps = max(3, int(2e10 / (2 * m * k * n)))  # ~20 GFLOP per timing
            s = timed(lambda: [torch.mm(a, b) for _ in range(reps)], repeats)
            row[f"{str(dtype).removeprefix('torch.')}_gflops"] = round(2 * m * k * n * reps / s / 1e9, 1)
        row["bf16_over_fp32"] = round(row["bfloat16_gflops"] / row["float32_gflops"], 2)
        emit(**row)


def bench_adamw(model, repeats: int) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    row = {"section": "adamw", "params_m": round(sum(p.numel() for p in params) / 1e6, 1)}
    for name, kw in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-9, **kw)
        row[f"{name}_s"] = round(timed(opt.step, repeats), 3)
        del opt
    row["loop_over_fused"] = round(row["loop_s"] / row["fused_s"], 2)
    emit(**row)


def _prompts(tokenizer) -> list[list[int]]:
    from rollout.data import make_arith

    rows = make_arith(PROMPTS, split="train")
    return [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"] + " Answer with just the number."}],
                                          add_generation_prompt=True, tokenize=True, return_dict=False)
            for r in rows]


def bench_generate(path: str, repeats: int) -> None:
    from rollout.engine import SamplingParams
    from rollout.hf_engine import HFEngine, left_pad

    engine = HFEngine(path, dtype="float32", device="cpu")
    prompts = _prompts(engine.tokenizer)
    counts: dict[str, list[int]] = {"hf_generate": [], "ours": []}

    def ours():
        outs = engine.generate(prompts, SamplingParams(n=GROUP, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW))
        counts["ours"].append(sum(len(o.response_ids) for o in outs))

    def hf_generate():
        ids, mask = left_pad(prompts, engine.pad_id, engine.device)
        with torch.no_grad():
            out = engine.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                        top_p=1.0, top_k=0, max_new_tokens=MAX_NEW, num_return_sequences=GROUP,
                                        pad_token_id=engine.pad_id, eos_token_id=engine.eos_ids)
        new = out[:, ids.shape[1]:]
        done = torch.isin(new, torch.tensor(engine.eos_ids)).int().cumsum(-1)
        counts["hf_generate"].append(int(((done == 0) | ((done == 1) & torch.isin(new, torch.tensor(engine.eos_ids))))
                                         .sum()))

    row = {"section": "generate", "rows": PROMPTS * GROUP, "max_new_tokens": MAX_NEW}
    for name, fn in (("hf_generate", hf_generate), ("ours", ours)):
        torch.manual_seed(0)
        s = timed(fn, repeats)
        tokens = statistics.fmean(counts[name])
        row[f"{name}_s"], row[f"{name}_tokens"] = round(s, 2), round(tokens, 1)
        row[f"{name}_tokens_per_s"] = round(tokens / s, 1)
    row["ours_over_hf_generate"] = round(row["ours_tokens_per_s"] / row["hf_generate_tokens_per_s"], 2)
    emit(**row)


def bench_train(model, repeats: int) -> None:
    from rl.batch import collate, collate_shared, split_by_token_budget, split_shared
    from rl.loss_config import LossConfig
    from rl.policy import PolicyModule
    from rl.types import Sample

    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    samples = []
    for k in range(PROMPTS):
        prompt = torch.randint(3, vocab, (PROMPT_LEN,), generator=g).tolist()
        for _ in range(GROUP):
            n = int(torch.randint(8, MAX_NEW + 1, (1,), generator=g))
            samples.append(Sample(len(samples), k, prompt, torch.randint(3, vocab, (n,), generator=g).tolist(),
                                  [-1.0] * n, "stop", 0, advantage=float(torch.randn(1, generator=g))))
    mask = [True] * len(samples)
    policy = PolicyModule(model).train()
    n_tok = float(sum(len(s.response_ids) for s in samples))
    loss_cfg = LossConfig()
    layouts = {"separate": [collate(samples, b, 0, mask) for b in split_by_token_budget(samples, 4096)],
               "shared": [collate_shared(samples, rows, 0, mask) for rows in split_shared(samples, 4096)]}
    row = {"section": "train", "samples": len(samples), "response_tokens": int(n_tok)}
    for name, mbs in layouts.items():
        def step():
            policy.zero_grad(set_to_none=True)
            for mb in mbs:
                loss, _ = policy(mb, mode="loss", temperature=1.0, loss=loss_cfg, global_num_tokens=n_tok,
                                 global_num_seqs=float(len(samples)))
                loss.backward()
        row[f"{name}_tokens"] = int(sum(mb.attention_mask.sum() for mb in mbs))
        row[f"{name}_s"] = round(timed(step, repeats), 2)
    row["separate_over_shared"] = round(row["separate_s"] / row["shared_s"], 2)
    emit(**row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=["gemm", "adamw", "generate", "train"],
                    choices=["gemm", "adamw", "generate", "train"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model alias or local HF directory")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    from launch.models import resolve_model

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    emit(section="machine", cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__)
    path = resolve_model(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for section in args.only:
        if section == "gemm":
            bench_gemm(model.config, args.repeats)
        elif section == "adamw":
            bench_adamw(model, args.repeats)
        elif section == "generate":
            bench_generate(path, args.repeats)
        else:
            bench_train(model, args.repeats)


if __name__ == "__main__":
    main()
