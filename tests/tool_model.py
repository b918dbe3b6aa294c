"""A tiny model that calls a tool: the tiny random Llama (launch/models.py, char tokenizer with "<>{}_" added),
trained in code for a few seconds to continue "Q a+b?" with "<calculator>a+b</calculator>", and the text after
the tool's "<result>...</result>" with " so <answer>". Real weights, real engine, real tool calls, no download."""

from __future__ import annotations

from pathlib import Path

PROBLEMS = [("2+3", "5"), ("4*6", "24")]


def prompt(expr: str) -> str:
    return f"Q {expr}?"


def completion(expr: str, value: str) -> str:
    return f"<calculator>{expr}</calculator><result>{value}</result> so {value}"


def build_tool_model(out: Path, steps: int = 300, hidden_size: int = 64) -> str:
    """The trained model under `out` (built once; about 5 s on 2 cores). Seeded in a private RNG stream.
    hidden_size 256 gives head_dim 64, a head size vLLM's attention kernels take (tests/gpu)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.models import build_tiny_random

    if (out / "config.json").exists():
        return str(out)
    build_tiny_random(out, hidden_size=hidden_size, extra_chars="<>{}_")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    seqs = [torch.tensor([tok(prompt(e) + completion(e, v), add_special_tokens=False)["input_ids"]
                          + [tok.eos_token_id]]) for e, v in PROBLEMS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            loss = sum(model(s, labels=s).loss for s in seqs)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.save_pretrained(out, safe_serialization=True)
    return str(out)
