"""Everything the driver checks and loads before it starts a worker.

Order matters for the user: cheap checks that can fail on a typo come first (reward specs, data
files and columns, the model path), so a bad run stops in seconds with a one-line error, before
any model is loaded. Then the model alias is materialised and the prompts are tokenised once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launch.config import Config, ConfigError
from launch.models import resolve_model
from rollout.data import encode_prompts, load_rows

# rendered-prompt bookkeeping that must not reach reward functions as dataset columns
_INTERNAL = ("prompt_ids", "prompt_text")


@dataclass
class Prepared:
    model_path: str
    train_rows: list[dict[str, Any]]
    """Each: {"prompt_ids", "prompt_text", "fields"} where fields is the dataset row."""
    eval_rows: list[dict[str, Any]]


def check_rewards(cfg: Config) -> None:
    import reward

    for spec in cfg.reward.fns:
        try:
            reward.load(spec)
        except Exception as e:  # the reward package words its errors for users
            raise ConfigError(f"reward.fns: {e}") from None


def prepare(cfg: Config) -> Prepared:
    check_rewards(cfg)
    d = cfg.data
    kw = dict(prompt_key=d.prompt_key, answer_key=d.answer_key, arith=d.arith)
    eval_raw = load_rows(d.eval, split="eval", **kw) if d.eval else []
    exclude = {r["prompt"] for r in eval_raw} if d.train == "arith" and d.eval == "arith" else None
    train_raw = load_rows(d.train, split="train", exclude=exclude, **kw)
    eval_raw = eval_raw[: d.eval_size]
    model_path = resolve_model(cfg.model.path, cfg.model.cache_dir)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    return Prepared(model_path, _rows(tokenizer, train_raw, d, d.train), _rows(tokenizer, eval_raw, d, d.eval or ""))


def _rows(tokenizer, raw: list[dict], data_cfg, source: str) -> list[dict]:
    encoded = encode_prompts(tokenizer, raw, data_cfg, source)
    return [{"prompt_ids": r["prompt_ids"], "prompt_text": r["prompt_text"],
             "fields": {k: v for k, v in r.items() if k not in _INTERNAL}} for r in encoded]
