"""Everything the driver checks and loads before it starts a worker.

Order matters for the user: cheap checks that can fail on a typo come first (reward specs, the
advantage estimator, data files and columns, the model path), so a bad run stops in seconds with a
one-line error, before any model is loaded. Then the model alias is materialised and the prompts are tokenised once.
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
    reward_names: tuple[str, ...] = ()
    """The metric name of each reward function (reward/<name>), in reward.fns order."""


def check_rewards(cfg: Config) -> tuple[str, ...]:
    """Resolve every reward spec (signatures, names) and the accuracy function; returns the names."""
    import reward
    from reward.registry import REPORTS_ACC

    try:
        names = tuple(fn.name for fn in reward.resolve_specs(list(cfg.reward.fns)))
    except Exception as e:  # the reward package words its errors for users
        raise ConfigError(f"reward.fns: {e}") from None
    chosen = cfg.reward.accuracy_fn
    if chosen is not None and chosen not in names:
        raise ConfigError(f"reward.accuracy_fn={chosen}: not one of the reward functions {list(names)}; name the one "
                          "whose `acc` defines correctness")
    reporting = [n for n in names if n in REPORTS_ACC]
    if chosen is None and len(reporting) > 1:
        raise ConfigError(f"reward.fns: {reporting} all report `acc`; set reward.accuracy_fn to the one that defines "
                          "a correct answer")
    return names


def startup_warnings(cfg: Config) -> list[str]:
    """Settings that are legal but cannot do what they are for; logged at start, never changed."""
    out = []
    t, alg = cfg.trainer, cfg.algorithm
    off_policy = alg.replay.enable or (alg.dynamic_sampling.enable and alg.dynamic_sampling.carry_surplus)
    if t.mini_batches * t.epochs == 1 and not off_policy:
        out.append("algorithm.loss: one update per step (trainer.mini_batches=1, trainer.epochs=1) and no off-policy "
                   "rows, so the importance ratio π/π_old is exactly 1 and the clip settings (eps_low, eps_high, "
                   "clip_ratio_c) never act: the update is a plain policy gradient. Raise trainer.mini_batches "
                   "(DAPO: 16 updates per rollout step) for PPO-style clipping")
    return out


def prepare(cfg: Config) -> Prepared:
    reward_names = check_rewards(cfg)
    try:  # a plug-in estimator is imported here: its signature and params are checked before any model loads
        cfg.algorithm.advantage_params()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    d = cfg.data
    kw = dict(prompt_key=d.prompt_key, answer_key=d.answer_key, arith=d.arith)
    eval_raw = load_rows(d.eval, split="eval", **kw) if d.eval else []
    exclude = {r["prompt"] for r in eval_raw} if d.train == "arith" and d.eval == "arith" else None
    train_raw = load_rows(d.train, split="train", exclude=exclude, **kw)
    eval_raw = eval_raw[: d.eval_size]
    model_path = resolve_model(cfg.model.path, cfg.model.cache_dir)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    return Prepared(model_path, _rows(tokenizer, train_raw, d, d.train), _rows(tokenizer, eval_raw, d, d.eval or ""),
                    reward_names)


def _rows(tokenizer, raw: list[dict], data_cfg, source: str) -> list[dict]:
    encoded = encode_prompts(tokenizer, raw, data_cfg, source)
    return [{"prompt_ids": r["prompt_ids"], "prompt_text": r["prompt_text"],
             "fields": {k: v for k, v in r.items() if k not in _INTERNAL}} for r in encoded]
