"""The names TRL, verl and OpenRLHF users type for our config keys, so an unknown key gets a translation.

    translate("num_generations")  # "TRL's num_generations is rollout.group_size here"
    translate("rollout.n")        # a suffix of verl's actor_rollout_ref.rollout.n: "verl's ... is rollout.group_size here"

A user arriving from another framework writes its names first; difflib against our own keys rarely finds
`rollout.group_size` from `num_generations`. Where the two frameworks count differently (batch sizes,
epochs, on/off switches) the note says what to set instead. Every target is a key of the schema
(tests/unit/test_config.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForeignKey:
    origin: str
    """The framework that spells it this way: TRL, verl or OpenRLHF."""
    target: str
    """Our dotted key."""
    note: str = ""
    """What differs, when setting `target` to the same value would not do the same thing."""


_TRL = {
    "learning_rate": ("trainer.lr", ""),
    "num_generations": ("rollout.group_size", ""),
    "max_completion_length": ("rollout.max_new_tokens", ""),
    "max_prompt_length": ("data.max_prompt_tokens", "a longer prompt is an error naming the row, not truncated"),
    "per_device_train_batch_size": ("trainer.train_prompts", "it counts prompts: a step trains trainer.train_prompts "
                                    "× rollout.group_size completions over all ranks"),
    "gradient_accumulation_steps": ("trainer.mini_batches", "there is no accumulation knob: a step's samples are split "
                                    "into trainer.mini_batches optimizer updates, and each update into micro-batches "
                                    "of trainer.micro_batch_tokens tokens"),
    "num_iterations": ("trainer.epochs", ""),
    "beta": ("algorithm.loss.kl_coef", ""),
    "epsilon": ("algorithm.loss.eps_low", "TRL's epsilon sets both bounds: also set algorithm.loss.eps_high"),
    "epsilon_high": ("algorithm.loss.eps_high", ""),
    "loss_type": ("algorithm.loss.loss_agg_mode", "dapo is token-mean, dr_grpo is seq-mean-token-sum-norm"),
    "importance_sampling_level": ("algorithm.loss.ratio_level", ""),
    "mask_truncated_completions": ("algorithm.overlong.filtering", ""),
    "temperature": ("rollout.temperature", ""),
    "reward_weights": ("reward.weights", ""),
    "reward_funcs": ("reward.fns", "your TRL functions plug in unchanged: reward.fns=[file.py:fn, ...]"),
    "num_train_epochs": ("trainer.total_steps", "runs are counted in steps: one pass over the prompts is "
                         "(number of prompts) / trainer.train_prompts steps"),
    "max_steps": ("trainer.total_steps", ""),
    "max_grad_norm": ("trainer.grad_clip", ""),
    "save_steps": ("trainer.save_every", ""),
    "eval_steps": ("trainer.eval_every", ""),
    "seed": ("trainer.seed", ""),
    "output_dir": ("trainer.output_dir", ""),
    "model_name_or_path": ("model.path", ""),
    "use_vllm": ("rollout.engine", "set rollout.engine=vllm"),
    "report_to": ("logging.wandb_mode", "wandb is the only logger: online, offline or disabled"),
}
_VERL = {
    "actor_rollout_ref.rollout.n": ("rollout.group_size", ""),
    "actor_rollout_ref.model.path": ("model.path", ""),
    "actor_rollout_ref.actor.optim.lr": ("trainer.lr", ""),
    "actor_rollout_ref.actor.ppo_mini_batch_size": ("trainer.mini_batches", "verl gives the mini-batch size in "
                                                    "prompts, here the count: data.train_batch_size / "
                                                    "ppo_mini_batch_size"),
    "actor_rollout_ref.actor.ppo_epochs": ("trainer.epochs", ""),
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": ("trainer.micro_batch_tokens", ""),
    "actor_rollout_ref.actor.clip_ratio": ("algorithm.loss.eps_low", "it sets both bounds: also set "
                                           "algorithm.loss.eps_high"),
    "actor_rollout_ref.actor.clip_ratio_low": ("algorithm.loss.eps_low", ""),
    "actor_rollout_ref.actor.clip_ratio_high": ("algorithm.loss.eps_high", ""),
    "actor_rollout_ref.actor.use_kl_loss": ("algorithm.loss.kl_coef", "there is no switch: kl_coef > 0 turns the "
                                            "KL loss on"),
    "actor_rollout_ref.actor.kl_loss_coef": ("algorithm.loss.kl_coef", ""),
    "actor_rollout_ref.actor.kl_loss_type": ("algorithm.loss.kl_estimator", "low_var_kl is k3"),
    "actor_rollout_ref.actor.entropy_coeff": ("algorithm.loss.entropy_coef", ""),
    "data.train_batch_size": ("trainer.train_prompts", ""),
    "data.max_prompt_length": ("data.max_prompt_tokens", "a longer prompt is an error naming the row"),
    "data.max_response_length": ("rollout.max_new_tokens", ""),
    "data.train_files": ("data.train", ""),
    "data.val_files": ("data.eval", ""),
    "custom_reward_function.path": ("reward.fns", "your compute_score plugs in unchanged: "
                                    "reward.fns=[path/to/file.py:compute_score]"),
    "custom_reward_function.name": ("reward.fns", "name it after the file: reward.fns=[file.py:NAME]"),
    "algorithm.adv_estimator": ("algorithm.advantage.name", "reinforce_plus_plus_baseline is reinforce_pp"),
    "algorithm.use_kl_in_reward": ("algorithm.kl_in_reward.enable", ""),
    "algorithm.kl_ctrl.kl_coef": ("algorithm.kl_in_reward.coef", ""),
    "trainer.total_epochs": ("trainer.total_steps", "runs are counted in steps: one pass over the prompts is "
                             "(number of prompts) / trainer.train_prompts steps"),
    "trainer.total_training_steps": ("trainer.total_steps", ""),
    "trainer.save_freq": ("trainer.save_every", ""),
    "trainer.test_freq": ("trainer.eval_every", ""),
    "trainer.default_local_dir": ("trainer.output_dir", ""),
}
_OPENRLHF = {
    "pretrain": ("model.path", ""),
    "n_samples_per_prompt": ("rollout.group_size", ""),
    "actor_learning_rate": ("trainer.lr", ""),
    "generate_max_len": ("rollout.max_new_tokens", ""),
    "prompt_max_len": ("data.max_prompt_tokens", "a longer prompt is an error naming the row, not truncated"),
    "rollout_batch_size": ("trainer.train_prompts", ""),
    "init_kl_coef": ("algorithm.loss.kl_coef", "that is the --use_kl_loss form; KL in the reward is "
                     "algorithm.kl_in_reward.coef"),
    "advantage_estimator": ("algorithm.advantage.name", ""),
    "eps_clip": ("algorithm.loss.eps_low", "it sets both bounds: also set algorithm.loss.eps_high"),
    "max_epochs": ("trainer.epochs", ""),
    "num_episodes": ("trainer.total_steps", "runs are counted in steps"),
    "save_path": ("trainer.output_dir", ""),
    "remote_rm_url": ("reward.fns", "a reward_func file plugs in unchanged: reward.fns=[file.py:reward_func]; an "
                      "HTTP reward model is the `remote` built-in with sandbox: off"),
    "input_key": ("data.prompt_key", ""),
    "label_key": ("data.answer_key", ""),
    "apply_chat_template": ("data.chat_template", ""),
}

FOREIGN_KEYS: dict[str, ForeignKey] = {
    name: ForeignKey(origin, target, note)
    for origin, table in (("TRL", _TRL), ("verl", _VERL), ("OpenRLHF", _OPENRLHF))
    for name, (target, note) in table.items()
}
"""Foreign name (dotted for verl, without the leading `--` for OpenRLHF) -> our key."""


def translate(key: str) -> str | None:
    """What `key` is called here, when it is a foreign name: written in full (`--n_samples_per_prompt`), as a
    suffix of a verl path (`rollout.n`), or as a foreign name under one of our sections (`trainer.learning_rate`)."""
    key = key.lstrip("-")
    match = FOREIGN_KEYS.get(key)
    name = key
    if match is None:
        suffixes = [n for n in FOREIGN_KEYS if n.endswith("." + key)]
        nested = [n for n in FOREIGN_KEYS if key.endswith("." + n)]
        if suffixes or nested:
            name = (suffixes or nested)[0]
            match = FOREIGN_KEYS[name]
    if match is None:
        return None
    note = f" ({match.note})" if match.note else ""
    return f"{match.origin}'s {name} is {match.target} here{note}"
