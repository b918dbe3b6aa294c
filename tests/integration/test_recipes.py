"""Every recipe in configs/ trains: 2 steps through the real CLI entry point on this CPU (real Ray actors,
DeepSpeed ranks, the HF engine, the reward sandbox), each recipe shrunk only in model, engine, devices and
sizes, never in structure: its trainer ranks (capped at 2, and at least 2 where it has more than one), its
mini-batches (capped at 4, at least 2 where it has more), epochs, KL in the loss or the reward, dynamic
sampling, replay, overlong shaping and filtering, advantage estimator, TIS, GSPO, zero stage and reward
functions all stay. A new recipe is covered by this test automatically.

The model is a tiny random Llama built here with two nudges so that a 2-step run means something: it ends
answers early (EOS) often, so response lengths vary from 1 to the limit, and it writes the digit 1 often, so
that the recipes' own verifiers score some answers of most groups correct (every row's answer is small). The
token budget fits two samples per micro-batch only when neither hit the length limit: the trainer ranks then
pack their shards of a mini-batch into different numbers of micro-batches, alongside zero-advantage groups
skipped unevenly — what broke several ranks with several mini-batches before. Each run must also show that
the engine and the trainer agree on the sampled tokens' logprobs (fp32 on both sides).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest

from launch.config import load_config

pytestmark = pytest.mark.slow

RECIPES = sorted(Path("configs").glob("*.yaml"))
MAX_NEW = 12
PARITY_ATOL = 1e-4
"""fp32 engine and trainer on the same weights differ by summation order only (~1e-6 on this model)."""


@pytest.fixture(scope="module")
def chatty_model(tmp_path_factory) -> str:
    """A tiny random Llama (the char tokenizer of `tiny-random`) whose last hidden state carries a constant
    component, read by an untied head to raise EOS (~10% per token) and the digit 1 (~14%)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from launch.models import build_tokenizer

    out = tmp_path_factory.mktemp("chatty") / "model"
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.model.embed_tokens.weight[:, 0] = 4.0  # survives the residual stream: h[0] ≈ +8 after the norm
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tok.eos_token_id, 0] = 0.3
        model.lm_head.weight[tok.convert_tokens_to_ids("1"), 0] = 0.35
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def _data_file(directory: Path, prompt_key: str, answer_key: str, n: int) -> str:
    """GSM8K-style rows under the recipe's own column names (answers 1: the model writes 1 often)."""
    rows = [{prompt_key: f"What is {i % 2} + {1 - i % 2}?", answer_key: f"{i % 2} + {1 - i % 2} = 1 #### 1",
             "data_source": "toy"} for i in range(n)]
    path = directory / f"data_{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _budget(model_dir: str, data_cfg) -> int:
    """Micro-batch token budget that holds two samples unless one of them hit the length limit."""
    from transformers import AutoTokenizer

    from rollout.data import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = render_prompt(tok, "What is 1 + 0?", chat_template=data_cfg.chat_template,
                         system_prompt=data_cfg.system_prompt, suffix=data_cfg.prompt_suffix)
    return 2 * (len(tok(text, add_special_tokens=False)["input_ids"]) + MAX_NEW) - 1


def shrink(recipe: Path, tmp: Path, model_dir: str) -> list[str]:
    """Overrides that make `recipe` run on a 2-core CPU in seconds, keeping its structure."""
    cfg = load_config(recipe)
    t, r, d, alg = cfg.trainer, cfg.rollout, cfg.data, cfg.algorithm
    ranks = 1 if t.num_workers == 1 else 2
    minis = 1 if t.mini_batches == 1 else min(t.mini_batches, 4)
    over = [
        f"model.path={model_dir}", "model.dtype=auto",
        "rollout.engine=hf", "rollout.gpus_per_worker=0", "rollout.placement=split", "rollout.weight_transport=auto",
        f"rollout.num_workers={min(r.num_workers, 2)}", f"rollout.group_size={min(r.group_size, 8)}",
        f"rollout.max_new_tokens={MAX_NEW}", "rollout.batch_size=32",
        f"trainer.num_workers={ranks}", "trainer.gpus_per_worker=0", f"trainer.mini_batches={minis}",
        "trainer.train_prompts=4", f"trainer.micro_batch_tokens={_budget(model_dir, d)}", "trainer.total_steps=2",
        "trainer.eval_every=0",
        "trainer.save_every=0", f"trainer.output_dir={tmp}", "trainer.lr=1e-3",
        f"reward.num_workers={min(cfg.reward.num_workers, 1)}", "reward.processes_per_worker=1",
        "data.eval_size=8", "logging.console=plain", "logging.wandb_mode=disabled",
    ]
    for split, source in (("train", d.train), ("eval", d.eval)):
        if source is None:
            continue
        if source == "arith":  # sums of two digits 0-2: 9 questions (3 held out), answers 0-4
            over += ["data.arith.num_terms=2", "data.arith.max_operand=2", "data.arith.train_size=64",
                     "data.arith.eval_size=3"]
        else:
            over.append(f"data.{split}={_data_file(tmp.parent, d.prompt_key, d.answer_key, 64 if split == 'train' else 8)}")
    if alg.overlong.buffer is not None:
        over.append("algorithm.overlong.buffer=4")  # the recipe's cache, in proportion to the shorter budget
    if alg.loss.loss_scale_factor is not None:
        over.append(f"algorithm.loss.loss_scale_factor={MAX_NEW}")
    return over


STRUCTURE = ("trainer.epochs", "trainer.zero_stage", "reward.fns", "reward.weights", "reward.accuracy_fn",
             "rollout.temperature", "rollout.top_p", "model.gradient_checkpointing")


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.timeout(600)
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains(ray_cluster, tmp_path, chatty_model, recipe):
    from launch.train import main

    out = tmp_path / "run"
    overrides = shrink(recipe, out, chatty_model)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():  # the CLI sets process-wide logging and warning filters: undo both
            assert main([str(recipe), *overrides]) == 0
    finally:
        root.handlers[:], root.level = handlers, level

    original, ran = asdict(load_config(recipe)), asdict(load_config(out / "config.yaml"))
    for key in STRUCTURE:  # the shrunk run kept the recipe's training structure ...
        assert _get(ran, key) == _get(original, key), key
    for cfg in (ran, original):  # ... and its whole algorithm, but for the overlong cache sized to the budget
        cfg["algorithm"]["overlong"].pop("buffer")
    assert ran["algorithm"] == original["algorithm"]
    assert (ran["trainer"]["num_workers"] > 1) == (original["trainer"]["num_workers"] > 1)
    assert (ran["trainer"]["mini_batches"] > 1) == (original["trainer"]["mini_batches"] > 1)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [rec for rec in records if "reward/mean" in rec]
    assert [rec["step"] for rec in steps] == [1, 2]
    assert (out / "final" / "config.json").is_file()
    trained = [rec for rec in steps if rec.get("rollout/logprob_diff_max") is not None]
    assert trained, "no step trained a token: the run exercised nothing"
    for rec in trained:
        assert rec["rollout/logprob_diff_max"] < PARITY_ATOL, rec["rollout/logprob_diff_max"]
        assert rec["actor/entropy"] > 0
