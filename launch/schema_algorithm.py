"""The `algorithm:` section of the config schema: advantages, policy loss, KL, dynamic sampling, overlong.

    cfg = AlgorithmConfig()                                   # GRPO advantages, DAPO-style clip-higher loss
    adv = compute_advantages(cfg.advantage.name, rewards, group_ids, **cfg.advantage_params())
    loss, metrics = policy_loss(logprobs, LossInputs(old, adv, mask), cfg.trainer_loss())
    sampler = cfg.dynamic_sampling.build()                    # None when dynamic sampling is off

Defaults live only here and in `rl.loss_config.LossConfig`, the `loss` section, which the trainer ranks
receive as it is (docs/algorithms.md lists them with their papers): GRPO advantages with verl parity
(std ddof=1, eps=1e-6), token-mean loss, clip 0.2/0.28, no dual clip, no KL, no entropy bonus, no TIS.
Recipes in configs/ state only what differs. Works as an OmegaConf structured config (plain types and
`X | None` only); `__post_init__` checks every value and says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NoReturn

from rl.advantages import SINGLETON_POLICIES, STRATA_SOURCES, resolve_advantage
from rl.loss_config import LossConfig
from rl.replay import ReplayBuffer
from rl.sampling import DynamicSampler


def _fail(key: str, value: Any, fix: str) -> NoReturn:
    raise ValueError(f"algorithm.{key}={value!r}: {fix}")


@dataclass(frozen=True)
class AdvantageConfig:
    name: str = "grpo"
    """Advantage estimator: grpo, dr_grpo (no std), rloo, reinforce_pp (REINFORCE++-baseline), stratified, or your
    own `pkg.module:fn` / `path/to/file.py:fn` (docs/algorithms.md, "Plug in an estimator")."""
    std_ddof: int = 1
    """Std of the group (grpo, stratified GN part) or batch (reinforce_pp) normaliser:
    1 = Bessel (verl), 0 = population."""
    eps: float = 1e-6
    """Added to the std before dividing (verl 1e-6; a constant group gives exactly 0)."""
    singleton: str = "zero"
    """Groups of one answer (G=1): `zero` gives advantage 0; `raw` gives the raw reward (verl parity)."""
    alpha: float = 0.6
    """stratified only: blend α·SAN + (1−α)·GRPO (Stratified GRPO, α=0.6 for Qwen2.5-3B-Base)."""
    san_std_ddof: int = 0
    """stratified only: std convention inside a stratum; 0 makes SAN exactly unit-variance per stratum."""
    strata_source: str | None = None
    """stratified only: where stratum ids come from: `reward` (the reward function's "stratum" key),
    `length_bucket`, `truncated`, `tool_calls` (the trajectory's tool-call count with rollout.tools, else
    reward_metrics["tool_calls"]), `metric:<key>` (any per-sample value a reward function returns under
    <key>); null = no strata."""
    length_bucket_size: int = 512
    """strata_source=length_bucket: response tokens per bucket (stratum = length // size)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Further keyword params of the estimator, e.g. `{beta: 0.5}` for a plug-in with `*, strata=None, beta`.
    The fields above (std_ddof, eps, singleton, alpha, san_std_ddof) go to every estimator that takes them."""

    def __post_init__(self) -> None:
        if ":" not in self.name:  # a plug-in is imported (and checked) by launch.prepare, not at config load
            self.estimator_params()
        if self.std_ddof not in (0, 1) or self.san_std_ddof not in (0, 1):
            _fail("advantage.std_ddof/san_std_ddof", (self.std_ddof, self.san_std_ddof), "use 0 or 1")
        if self.eps < 0:
            _fail("advantage.eps", self.eps, "must be >= 0 (1e-6 is verl's value)")
        if self.singleton not in SINGLETON_POLICIES:
            _fail("advantage.singleton", self.singleton, "use `zero` (advantage 0) or `raw` (verl: raw reward)")
        if not 0.0 <= self.alpha <= 1.0:
            _fail("advantage.alpha", self.alpha, "must be in [0, 1] (0 = plain GRPO, 1 = pure SAN; paper 0.6)")
        src = self.strata_source
        if src is not None and src not in STRATA_SOURCES and not (src.startswith("metric:") and len(src) > 7):
            _fail("advantage.strata_source", self.strata_source, f"use one of {', '.join(STRATA_SOURCES)} or null")
        if self.name == "stratified" and self.strata_source is None:
            _fail("advantage.strata_source", None, "advantage.name=stratified needs strata: set strata_source to "
                  "reward (the reward function returns a `stratum`), tool_calls, length_bucket or truncated")
        if self.length_bucket_size < 1:
            _fail("advantage.length_bucket_size", self.length_bucket_size, "must be >= 1")

    def estimator_params(self) -> dict[str, Any]:
        """Keyword params of estimator `name`: the fields it takes by name, then `params`. Resolves `name`
        (imports a plug-in) and checks its signature and the params; ValueError naming the key otherwise."""
        try:
            estimator = resolve_advantage(self.name)
        except (KeyError, ValueError, TypeError) as e:  # unknown name, bad plug-in spec, bad signature
            _fail("advantage.name", self.name, str(e))
        fields = ("std_ddof", "eps", "singleton", "alpha", "san_std_ddof")  # passed to estimators that take them
        for key in self.params:
            if key in fields:
                _fail(f"advantage.params.{key}", self.params[key], f"set algorithm.advantage.{key} instead")
        params = {k: getattr(self, k) for k in fields if k in estimator.params} | self.params
        try:
            estimator.check(params)
        except TypeError as e:
            _fail("advantage.params", self.params, str(e))
        return params


@dataclass(frozen=True)
class KLRewardConfig:
    enable: bool = False
    """Subtract coef·Σ_t KL_t(π_old‖π_ref) from each sample's reward before advantages (PPO-RLHF style)
    instead of a KL term in the loss; needs a reference model."""
    coef: float = 0.001
    """KL-in-reward coefficient."""
    estimator: str = "k1"
    """Per-token estimator summed over the response: k1, k2, k3 or abs (no gradient flows through a reward)."""

    def __post_init__(self) -> None:
        if self.coef < 0:
            _fail("kl_in_reward.coef", self.coef, "must be >= 0")
        if self.estimator not in ("k1", "k2", "k3", "abs"):
            _fail("kl_in_reward.estimator", self.estimator, "use k1, k2, k3 or abs (straight-through `+` "
                  "variants only make sense in the loss)")


@dataclass(frozen=True)
class DynamicSamplingConfig:
    enable: bool = False
    """DAPO dynamic sampling: drop prompt groups whose `metric` is the same for every answer and generate
    more until trainer.train_prompts informative groups are collected."""
    metric: str = "acc"
    """What must vary within a group: `reward` (the final reward) or a reward_metrics key (built-in verifiers
    report `acc`). Filter on accuracy, not the shaped reward: overlong shaping alone can make a group vary."""
    max_rounds: int | None = 10
    """Generation rounds per step before giving up with an error (DAPO script: 10); null = unlimited. With
    algorithm.replay.enable the step ends short instead and the replay buffer fills the missing rows."""
    carry_surplus: bool = False
    """Keep informative groups beyond train_prompts for the next step instead of discarding them (the paper's
    and verl's behaviour; counted in rollout/ds_surplus and rollout/ds_discarded_total). Carried groups were
    sampled by the previous policy version, so carrying needs algorithm.loss.tis_level: the TIS weight
    min(π_old/π_behaviour, tis_cap) then corrects them against their own behaviour logprobs."""

    def __post_init__(self) -> None:
        if not self.metric:
            _fail("dynamic_sampling.metric", self.metric, "name `reward` or a reward_metrics key such as `acc`")
        if self.max_rounds is not None and self.max_rounds < 1:
            _fail("dynamic_sampling.max_rounds", self.max_rounds, "must be >= 1, or null for no limit")

    def build(self) -> DynamicSampler | None:
        """The driver's sampler for these settings (None when disabled)."""
        if not self.enable:
            return None
        return DynamicSampler(partial(sample_metric, key=self.metric), max_rounds=self.max_rounds,
                              carry_surplus=self.carry_surplus)


def sample_metric(sample: Any, key: str) -> float:
    """`sample.reward` for key "reward", else `sample.reward_metrics[key]` (an `rl.types.Sample`)."""
    if key == "reward":
        value = sample.reward
    else:
        if key not in sample.reward_metrics:
            raise KeyError(
                f"dynamic sampling metric {key!r} missing from sample (prompt_id={getattr(sample, 'prompt_id', '?')}) "
                f"reward_metrics {sorted(sample.reward_metrics)}: make the reward function return it, or set "
                "algorithm.dynamic_sampling.metric=reward"
            )
        value = sample.reward_metrics[key]
    if value is None:
        raise ValueError(f"dynamic sampling: sample prompt_id={getattr(sample, 'prompt_id', '?')} has no {key}; "
                         "drop failed rewards first (algorithm.mask_reward_errors)")
    return float(value)


@dataclass(frozen=True)
class OverlongConfig:
    shaping: bool = False
    """DAPO soft overlong punishment (eq. 13): penalty 0 → −1 over the last `buffer` tokens of max_new_tokens."""
    buffer: int | None = None
    """L_cache, in tokens; null = rollout.max_new_tokens // 5 (DAPO: 4096 of 20480)."""
    penalty_factor: float = 1.0
    """Scale of the overlong penalty (verl overlong_penalty_factor)."""
    filtering: bool = False
    """DAPO overlong filtering: truncated answers (finish reason `length`) get loss mask 0 (their rewards still
    enter the group statistics)."""

    def __post_init__(self) -> None:
        if self.buffer is not None and self.buffer < 1:
            _fail("overlong.buffer", self.buffer, "must be >= 1 token, or null for rollout.max_new_tokens // 5")
        if self.penalty_factor < 0:
            _fail("overlong.penalty_factor", self.penalty_factor, "must be >= 0")

    def resolved_buffer(self, max_new_tokens: int) -> int:
        """The buffer length for a given generation budget; errors if it does not fit."""
        buffer = self.buffer if self.buffer is not None else max(1, max_new_tokens // 5)
        if buffer > max_new_tokens:
            _fail("overlong.buffer", buffer, f"must be <= rollout.max_new_tokens={max_new_tokens}")
        return buffer


REPLAY_MODES = ("shortfall", "ratio")


@dataclass(frozen=True)
class ReplayConfig:
    enable: bool = False
    """Selective Sample Replay (VL-Rethinker arXiv 2504.08837): keep past samples with a non-zero advantage and
    replay them, prioritised by |advantage|, when fresh informative samples fall short (rl/replay.py)."""
    capacity: int = 8192
    """Most entries held; the oldest leave first (SSR keeps one episode: 1024 prompts x 8 answers)."""
    alpha: float = 1.0
    """Priority exponent: P(j) ∝ (|Â_j| + delta)^alpha (0 = uniform, 1 = SSR; PER arXiv 1511.05952)."""
    delta: float = 0.0
    """Added to |Â| before the power (0 = SSR; > 0 flattens the priorities)."""
    age_decay: float = 1.0
    """λ in (0, 1]: each priority is multiplied by λ^(policy versions of age); 1 = no decay."""
    max_staleness: int | None = 1
    """Entries more than this many policy versions old are dropped before each draw (1 = SSR parity: SSR clears
    its buffer at each behaviour-policy sync, and weights sync every step here); null = no limit."""
    mode: str = "shortfall"
    """How many to replay: `shortfall` tops the batch up to N_batch (SSR Algorithm 1); `ratio` makes a
    fraction `ratio` of the trained batch replayed (ExGRPO arXiv 2510.02245)."""
    ratio: float = 0.5
    """Replayed fraction of the trained batch in `ratio` mode (ExGRPO experience_ratio 0.5)."""
    staleness_cap: float | None = 2.0
    """C of the decoupled-PPO weight min(π_old/π_rollout, C) on replayed rows (arXiv 2110.00641); null = no
    correction. It is TIS on the replayed rows (loss.tis_scope=replayed); with loss.tis_level set, TIS already
    applies this weight to the rows of loss.tis_scope, with loss.tis_cap."""
    per_beta: float | None = None
    """β of the PER weights (N·P(j))^(−β)/max on replayed rows (arXiv 1511.05952 §3.4); null = off (SSR keeps
    its prioritisation bias on purpose)."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            _fail("replay.capacity", self.capacity, "must be >= 1 entries, e.g. a few training batches (SSR: 8192)")
        if self.alpha < 0:
            _fail("replay.alpha", self.alpha, "must be >= 0 (0 = uniform, 1 = SSR: P ∝ |advantage|)")
        if self.delta < 0:
            _fail("replay.delta", self.delta, "must be >= 0 (0 = SSR)")
        if not 0.0 < self.age_decay <= 1.0:
            _fail("replay.age_decay", self.age_decay, "must be in (0, 1] (1 = no decay); use max_staleness to drop "
                  "old samples outright")
        if self.max_staleness is not None and self.max_staleness < 0:
            _fail("replay.max_staleness", self.max_staleness, "must be >= 0 policy versions, or null for no limit")
        if self.mode not in REPLAY_MODES:
            _fail("replay.mode", self.mode, f"use one of {', '.join(REPLAY_MODES)}")
        if not 0.0 <= self.ratio < 1.0:
            _fail("replay.ratio", self.ratio, "must be in [0, 1) (ExGRPO: 0.5)")
        if self.staleness_cap is not None and self.staleness_cap <= 0:
            _fail("replay.staleness_cap", self.staleness_cap, "must be > 0 (2.0 as verl's TIS) or null (off)")
        if self.per_beta is not None and not 0.0 <= self.per_beta <= 1.0:
            _fail("replay.per_beta", self.per_beta, "must be in [0, 1] (PER anneals 0.4 -> 1) or null (off)")

    def build(self, drop_truncated: bool) -> ReplayBuffer | None:
        """The driver's buffer (None when disabled); pass drop_truncated=algorithm.overlong.filtering."""
        if not self.enable:
            return None
        return ReplayBuffer(self.capacity, alpha=self.alpha, delta=self.delta, age_decay=self.age_decay,
                            max_staleness=self.max_staleness, drop_truncated=drop_truncated)


@dataclass(frozen=True)
class AlgorithmConfig:
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """How rewards become advantages (rl/advantages.py)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Policy-gradient loss (rl/losses.py policy_loss)."""
    kl_in_reward: KLRewardConfig = field(default_factory=KLRewardConfig)
    """Optional KL penalty in the reward (alternative to loss.kl_coef)."""
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    """DAPO dynamic sampling (rl/sampling.py DynamicSampler)."""
    overlong: OverlongConfig = field(default_factory=OverlongConfig)
    """DAPO overlong reward shaping and filtering."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Reweighted replay of past informative samples (rl/replay.py ReplayBuffer)."""
    mask_reward_errors: bool = True
    """Samples whose reward function raised or timed out are excluded from the loss and from group statistics
    (false: they get reward 0 and train like any other sample)."""

    def __post_init__(self) -> None:
        if self.kl_in_reward.enable and self.loss.kl_coef > 0:
            _fail("kl_in_reward.enable", True, "KL is already in the loss (algorithm.loss.kl_coef > 0); use one: "
                  "set loss.kl_coef=0 or kl_in_reward.enable=false")
        if self.dynamic_sampling.enable and self.dynamic_sampling.carry_surplus and (
                self.loss.tis_level is None or self.loss.tis_scope != "all"):
            _fail("dynamic_sampling.carry_surplus", True, "carried groups are one policy version old and need an "
                  "off-policy correction: set algorithm.loss.tis_level=token (TIS against their behaviour logprobs), "
                  "or carry_surplus=false to discard the surplus as DAPO does")
        rp = self.replay
        if self.loss.tis_scope == "replayed" and not rp.enable:
            _fail("loss.tis_scope", "replayed", "no row is replayed with algorithm.replay.enable=false: use "
                  "tis_scope=all, or enable replay")
        if rp.enable and self.loss.tis_level is not None and rp.staleness_cap not in (None, self.loss.tis_cap):
            _fail("replay.staleness_cap", rp.staleness_cap, f"TIS is on (loss.tis_level={self.loss.tis_level}) and "
                  f"already weights replayed rows by min(π_old/π_rollout, loss.tis_cap={self.loss.tis_cap}); set "
                  "replay.staleness_cap=null or equal to loss.tis_cap")

    def trainer_loss(self) -> LossConfig:
        """The loss the trainer ranks run: `loss`, with the replay correction as TIS on the replayed rows
        (tis_scope=replayed, cap replay.staleness_cap) when replay is on and TIS is off. One importance-weight
        path serves both (rl.losses.importance_weights)."""
        rp = self.replay
        if rp.enable and self.loss.tis_level is None and rp.staleness_cap is not None:
            return replace(self.loss, tis_level="token", tis_cap=rp.staleness_cap, tis_scope="replayed")
        return self.loss

    def advantage_params(self) -> dict[str, Any]:
        """Keyword params of `compute_advantages` for `advantage.name` (`AdvantageConfig.estimator_params`)."""
        return self.advantage.estimator_params()

    @property
    def needs_reference(self) -> bool:
        """True when a reference model must be loaded (KL in the loss or in the reward)."""
        return self.loss.kl_coef > 0 or self.kl_in_reward.enable
