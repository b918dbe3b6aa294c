"""rl/advantages.py: worked vectors (GRPO / Dr. GRPO, SAN), loop == vectorised, edge cases, strata ids,
the registry, and the config -> compute_advantages mapping."""

from __future__ import annotations

import math

import pytest
import torch

from launch.schema_algorithm import AdvantageConfig, AlgorithmConfig
from rl.advantages import (
    ADVANTAGES, compute_advantages, length_bucket, resolve_advantage, strata_from_keys, strata_from_samples,
)
from rl.registry import Registry
from rl.types import Sample

ATOL = 1e-5


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def one_group(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


def close(actual: torch.Tensor, expected, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ----------------------------------------------------------------------------- GRPO table (ddof 1 / 0, Dr. GRPO)


@pytest.mark.parametrize(
    "rewards, ddof1, ddof0, dr",
    [
        # mean 0.5; ddof=1 std = sqrt(4·0.25/3) = 0.57735 -> 0.5/0.57735 = 0.866025; ddof=0 std 0.5 -> 1.
        ([1, 0, 0, 1], [0.866024, -0.866024, -0.866024, 0.866024], [0.999998, -0.999998, -0.999998, 0.999998],
         [0.5, -0.5, -0.5, 0.5]),
        # mean −0.5; deviations (1.5, −0.5 ×3); ddof=1 std = sqrt(3/3) = 1; ddof=0 std = sqrt(3/4) = 0.866025.
        ([1, -1, -1, -1], [1.499999, -0.5, -0.5, -0.5], [1.732049, -0.577350, -0.577350, -0.577350],
         [1.5, -0.5, -0.5, -0.5]),
        # mean 0.25; ddof=1 std = sqrt(0.75/3) = 0.5 -> 0.75/0.5 = 1.5; ddof=0 std = 0.433013 -> 1.732051.
        ([1, 0, 0, 0], [1.499997, -0.499999, -0.499999, -0.499999], [1.732047, -0.577349, -0.577349, -0.577349],
         [0.75, -0.25, -0.25, -0.25]),
        # constant group: 0 / (0 + eps) = 0 exactly, no special case.
        ([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
    ],
)
def test_grpo_vectors(rewards, ddof1, ddof0, dr):
    r, g = t(rewards), one_group(len(rewards))
    close(compute_advantages("grpo", r, g), ddof1)
    close(compute_advantages("grpo", r, g, std_ddof=0), ddof0)
    close(compute_advantages("dr_grpo", r, g), dr)


def test_grpo_singleton_policy():
    # verl sets mean := 0, std := 1 for G=1, so Â = 0.7 / (1 + 1e-6); our default is 0.
    r, g = t([0.7]), one_group(1)
    close(compute_advantages("grpo", r, g, singleton="raw"), [0.7])
    close(compute_advantages("grpo", r, g), [0.0])
    for name in ("dr_grpo", "rloo", "reinforce_pp"):
        close(compute_advantages(name, r, g), [0.0])
    close(compute_advantages("dr_grpo", r, g, singleton="raw"), [0.7])
    close(compute_advantages("rloo", r, g, singleton="raw"), [0.7])


def test_rloo_and_reinforce_pp_small_vectors():
    # RLOO, group [1, 0, 0, 1]: baseline of sample 0 = mean(0, 0, 1) = 1/3 -> 2/3; sample 1: 0 − 2/3.
    r, g = t([1, 0, 0, 1]), one_group(4)
    close(compute_advantages("rloo", r, g), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # REINFORCE++-baseline, groups {1,0} and {1,1,1,0}: centred x = [0.5, −0.5, 0.25, 0.25, 0.25, −0.75];
    # batch mean 0, ddof=1 std = sqrt((0.25+0.25+3·0.0625+0.5625)/5) = sqrt(0.25) = 0.5 -> x / 0.5.
    r2, g2 = t([1, 0, 1, 1, 1, 0]), t([7, 7, 3, 3, 3, 3], torch.long)
    close(compute_advantages("reinforce_pp", r2, g2), [1.0, -1.0, 0.5, 0.5, 0.5, -1.5])


# ----------------------------------------------------------------------------- SAN (Stratified GRPO)

R_SAN = [1, 0, 1, 1, 0, 1, 0, 1]
C_SAN = [0, 0, 1, 1, 1, 2, 2, 2]  # strata sizes 2, 3, 3


def san(alpha: float = 0.6, **kw) -> torch.Tensor:
    return compute_advantages("stratified", t(R_SAN), one_group(8), strata=t(C_SAN, torch.long), alpha=alpha, **kw)


def test_stratified_vectors():
    # GN: mean 5/8, ddof=1 std = sqrt(8·(5/8)(3/8)/7) = 0.517549
    #     -> 0.375/0.517549 = 0.724567 and −0.625/0.517549 = −1.207612.
    close(san(alpha=0.0), [0.724567, -1.207612, 0.724567, 0.724567, -1.207612, 0.724567, -1.207612, 0.724567])
    # SAN ddof=0: stratum {1,0}: ±0.5/0.5 = ±1; strata {1,1,0}: mean 2/3, std 0.471405 -> 0.707107, −1.414214.
    close(san(alpha=1.0), [0.999998, -0.999998, 0.707105, 0.707105, -1.414211, 0.707105, -1.414211, 0.707105])
    # blend 0.6·SAN + 0.4·GN, e.g. sample 0: 0.6·0.999998 + 0.4·0.724567 = 0.889826.
    close(san(), [0.889826, -1.083044, 0.714090, 0.714090, -1.331571, 0.714090, -1.331571, 0.714090])
    # SAN with ddof=1 (comparison row): stratum {1,0}: std 0.707107 -> ±0.707107; {1,1,0}: std 0.57735.
    close(san(alpha=1.0, san_std_ddof=1),
          [0.707106, -0.707106, 0.577349, 0.577349, -1.154699, 0.577349, -1.154699, 0.577349])
    close(san(san_std_ddof=1), [0.714090, -0.907308, 0.636237, 0.636237, -1.175864, 0.636237, -1.175864, 0.636237])


def test_stratified_decomposition_and_variance_reduction():
    r, c = t(R_SAN, torch.float64), t(C_SAN, torch.long)
    a_g = compute_advantages("dr_grpo", r, one_group(8))  # R − R̄ (Prop. 1 left side)
    a_s = compute_advantages("dr_grpo", r, c)  # R − R̄_k: strata as groups (one prompt here)
    close(a_g, [0.375, -0.625, 0.375, 0.375, -0.625, 0.375, -0.625, 0.375])
    close(a_s, [0.5, -0.5, 1 / 3, 1 / 3, -2 / 3, 1 / 3, -2 / 3, 1 / 3])
    bias = a_g - a_s  # cross-stratum term R̄_k − R̄: −1/8 for stratum 0, 2/3 − 5/8 = 1/24 otherwise
    close(bias, [-0.125, -0.125] + [0.041667] * 6)
    # Thm. 1: Var[A_G] − Var[A_S] = (1/K) Σ_k n_k (R̄_k − R̄)² = (2·(1/64) + 6·(1/576)) / 8 = 0.005208.
    lhs = a_g.var(correction=0) - a_s.var(correction=0)
    assert lhs.item() == pytest.approx(0.005208, abs=1e-6)
    assert lhs.item() == pytest.approx(bias.square().mean().item(), abs=1e-12)


def test_stratified_affine_invariance_and_singletons():
    r, c, g = t(R_SAN, torch.float64), t(C_SAN, torch.long), one_group(8)
    # Prop. 2: SAN is invariant to r -> 2r + 3 when eps = 0.
    a = compute_advantages("stratified", r, g, strata=c, alpha=1.0, eps=0.0)
    b = compute_advantages("stratified", 2 * r + 3, g, strata=c, alpha=1.0, eps=0.0)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    # singleton stratum: r=[1,0,1], c=[0,1,1]: stratum {0} has one member -> SAN 0; blend keeps 0.4·GN.
    r3, c3, g3 = t([1, 0, 1]), t([0, 1, 1], torch.long), one_group(3)
    assert compute_advantages("stratified", r3, g3, strata=c3, alpha=1.0)[0].item() == 0.0
    gn = compute_advantages("grpo", r3, g3)
    assert compute_advantages("stratified", r3, g3, strata=c3)[0].item() == pytest.approx(0.4 * gn[0].item())
    # One stratum covering the group: SAN == GN with the same ddof, so the blend is plain GRPO.
    same = compute_advantages("stratified", r, g, strata=torch.zeros(8, dtype=torch.long), san_std_ddof=1)
    torch.testing.assert_close(same, compute_advantages("grpo", r, g), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- loop reference


def _std(vals: list[float], ddof: int) -> float:
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - ddof)) if len(vals) > ddof else 0.0


def _norm(x: float, mean: float, std: float, eps: float) -> float:
    return 0.0 if std + eps == 0 else (x - mean) / (std + eps)


def reference_advantages(name, rewards, group_ids, strata=None, *, std_ddof=1, eps=1e-6, singleton="zero",
                         alpha=0.6, san_std_ddof=0) -> list[float]:
    """Slow, obviously-correct loop over samples (test oracle only)."""
    r, g = rewards.tolist(), group_ids.tolist()
    s = strata.tolist() if strata is not None else None
    out = []
    for i in range(len(r)):
        vals = [r[j] for j in range(len(r)) if g[j] == g[i]]
        n, mean = len(vals), sum(vals) / len(vals)
        raw = {"grpo": r[i] / (1 + eps)}.get(name, r[i])
        if n == 1 and name != "stratified":
            out.append(raw if singleton == "raw" else 0.0)
        elif name in ("grpo", "stratified"):
            gn = (raw if singleton == "raw" else 0.0) if n == 1 else _norm(r[i], mean, _std(vals, std_ddof), eps)
            if name == "grpo":
                out.append(gn)
                continue
            cell = [r[j] for j in range(len(r)) if g[j] == g[i] and s[j] == s[i]]
            sa = 0.0 if len(cell) == 1 else _norm(r[i], sum(cell) / len(cell), _std(cell, san_std_ddof), eps)
            out.append(alpha * sa + (1 - alpha) * gn)
        elif name == "dr_grpo":
            out.append(r[i] - mean)
        elif name == "rloo":
            out.append(r[i] - (sum(vals) - r[i]) / (n - 1))
        elif name == "reinforce_pp":
            out.append(r[i] - mean)  # whitened below
    if name == "reinforce_pp":
        sizes = [g.count(x) for x in g]
        used = [i for i in range(len(r)) if sizes[i] > 1 or singleton == "raw"]
        xs = [out[i] for i in used]
        if xs:
            m, sd = sum(xs) / len(xs), _std(xs, std_ddof)
            out = [_norm(out[i], m, sd, eps) if i in used else 0.0 for i in range(len(r))]
    return out


PARAMS = {
    "grpo": [{}, {"std_ddof": 0}, {"singleton": "raw"}, {"eps": 0.0}],
    "dr_grpo": [{}, {"singleton": "raw"}],
    "rloo": [{}, {"singleton": "raw"}],
    "reinforce_pp": [{}, {"std_ddof": 0, "singleton": "raw"}],
    "stratified": [{}, {"alpha": 0.3, "san_std_ddof": 1, "std_ddof": 0}, {"singleton": "raw", "alpha": 1.0}],
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_loop_equals_vectorised(name):
    gen = torch.Generator().manual_seed(0)
    for trial in range(6):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        # non-contiguous, unsorted group ids with sizes from 1 up; binary and continuous rewards
        group_ids = torch.randint(0, max(1, n // 3), (n,), generator=gen) * 7 - 5
        rewards = (torch.randint(0, 2, (n,), generator=gen).double() if trial % 2
                   else torch.randn(n, generator=gen, dtype=torch.float64))
        strata = torch.randint(0, 3, (n,), generator=gen)
        for params in PARAMS[name]:
            got = compute_advantages(name, rewards, group_ids, strata=strata, **params)
            want = reference_advantages(name, rewards, group_ids, strata, **params)
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-9, rtol=1e-9,
                                       msg=lambda m: f"{name} {params} trial {trial}: {m}")


# ----------------------------------------------------------------------------- edge cases and errors


def test_all_equal_groups_and_empty_batch():
    r, g = t([0.0, 0.0, 1.0, 1.0, 1.0]), t([0, 0, 1, 1, 1], torch.long)
    for name in ADVANTAGES.names():
        adv = compute_advantages(name, r, g, strata=t([0, 1, 0, 0, 1], torch.long))
        assert torch.equal(adv, torch.zeros(5)), name
        assert compute_advantages(name, t([]), t([], torch.long), strata=t([], torch.long)).shape == (0,)


def test_dtype_follows_rewards():
    g = one_group(2)
    assert compute_advantages("grpo", t([1.0, 0.0], torch.float64), g).dtype == torch.float64
    assert compute_advantages("grpo", t([1, 0], torch.long), g).dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewards_rejected(bad):
    with pytest.raises(ValueError, match="rewards has 1 non-finite"):
        compute_advantages("grpo", t([1.0, bad]), one_group(2))


def test_bad_inputs_have_clear_errors():
    r = t([1.0, 0.0])
    with pytest.raises(KeyError, match="known: dr_grpo, grpo, reinforce_pp, rloo, stratified"):
        compute_advantages("gpro", r, one_group(2))
    with pytest.raises(TypeError, match="unknown params \\['alpha'\\]"):
        compute_advantages("grpo", r, one_group(2), alpha=0.5)
    with pytest.raises(ValueError, match="needs strata"):
        compute_advantages("stratified", r, one_group(2))
    with pytest.raises(ValueError, match="group_ids must be an integer tensor"):
        compute_advantages("grpo", r, t([0.0, 0.0]))
    with pytest.raises(ValueError, match="rewards must be 1-D"):
        compute_advantages("grpo", r[None], one_group(2)[None])
    with pytest.raises(ValueError, match="ddof"):
        compute_advantages("grpo", r, one_group(2), std_ddof=2)
    with pytest.raises(ValueError, match="singleton"):
        compute_advantages("grpo", r, one_group(2), singleton="skip")


def test_registry_rejects_duplicates_and_lists_names():
    reg: Registry = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a")(lambda: 2)
    with pytest.raises(KeyError) as e:
        reg.get("b")
    assert str(e.value) == "unknown thing 'b'; known: a"
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGES.register("grpo")(lambda *a, **k: None)


# ----------------------------------------------------------------------------- strata ids


def _sample(i: int, n_tokens: int, finish: str = "stop", stratum: str | None = None, metrics=None) -> Sample:
    return Sample(prompt_id=i, group_id=0, prompt_ids=[1], response_ids=[5] * n_tokens,
                  rollout_logprobs=[-0.1] * n_tokens, finish_reason=finish, policy_version=0,
                  stratum=stratum, reward_metrics=metrics or {})


def test_strata_helpers():
    assert strata_from_keys(["a", "b", None, "a", None, 3]).tolist() == [0, 1, -1, 0, -1, 2]
    assert length_bucket(t([0, 511, 512, 1500], torch.long), 512).tolist() == [0, 0, 1, 2]
    samples = [_sample(0, 3, stratum="x", metrics={"tool_calls": 2}),
               _sample(1, 600, "length", None, {"tool_calls": 0})]
    assert strata_from_samples(samples, "reward").tolist() == [0, -1]
    assert strata_from_samples(samples, "length_bucket", length_bucket_size=512).tolist() == [0, 1]
    assert strata_from_samples(samples, "truncated").tolist() == [0, 1]
    assert strata_from_samples(samples, "tool_calls").tolist() == [2, 0]
    with pytest.raises(ValueError, match="reward_metrics\\['tool_calls'\\]"):
        strata_from_samples([_sample(0, 1)], "tool_calls")
    with pytest.raises(ValueError, match="unknown strata source"):
        strata_from_samples(samples, "topic")
    # any per-sample value a reward function reports, one stratum per distinct value (2.0 and 2 are one)
    samples = [_sample(0, 1, metrics={"hops": h}) for h in (2.0, 1, 2, 0.5)]
    assert strata_from_samples(samples, "metric:hops").tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError, match="has no reward_metrics\\['depth'\\]"):
        strata_from_samples(samples, "metric:depth")
    AdvantageConfig(name="stratified", strata_source="metric:hops")
    with pytest.raises(ValueError, match="strata_source"):
        AdvantageConfig(name="stratified", strata_source="metric:")


# ----------------------------------------------------------------------------- config mapping


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_config_advantage_params_are_accepted(name):
    cfg = AlgorithmConfig(advantage=AdvantageConfig(name=name, strata_source="reward"))
    params = cfg.advantage_params()
    assert tuple(sorted(params)) == resolve_advantage(name).params  # every estimator param has a config key
    r, g = t([1.0, 0.0, 1.0, 1.0]), one_group(4)
    adv = compute_advantages(cfg.advantage.name, r, g, strata=t([0, 0, 1, 1], torch.long), **params)
    assert adv.shape == (4,)


def test_advantage_config_validation_says_how_to_fix():
    with pytest.raises(ValueError, match="algorithm.advantage.name='ppo': unknown advantage 'ppo'; known: dr_grpo, grpo"):
        AdvantageConfig(name="ppo")
    with pytest.raises(ValueError, match="did you mean 'grpo'\\?"):  # a typo'd built-in: the nearest name
        AdvantageConfig(name="gpro")
    with pytest.raises(ValueError, match="algorithm.advantage.params=\\{'beta': 0.5\\}: advantage 'grpo' got unknown "
                                         "params \\['beta'\\].*it accepts \\['eps', 'singleton', 'std_ddof'\\]"):
        AdvantageConfig(params={"beta": 0.5})
    with pytest.raises(ValueError, match="algorithm.advantage.params.eps=0.1: set algorithm.advantage.eps instead"):
        AdvantageConfig(params={"eps": 0.1})  # one key per setting
    with pytest.raises(ValueError, match="needs strata: set strata_source"):
        AdvantageConfig(name="stratified")
    with pytest.raises(ValueError, match="alpha=1.5: must be in \\[0, 1\\]"):
        AdvantageConfig(alpha=1.5)


# ----------------------------------------------------------------------------- plug-in estimators

PLUGIN = """
import torch


def scaled(rewards, group_ids, *, strata=None, beta, eps=0.0):
    \"\"\"beta · (r − mean_g): Dr. GRPO scaled (a stand-in for a user's estimator).\"\"\"
    _, idx = torch.unique(group_ids, return_inverse=True)
    n = int(idx.max()) + 1 if len(idx) else 0
    mean = torch.zeros(n, dtype=rewards.dtype).index_add_(0, idx, rewards) / torch.bincount(idx, minlength=n)
    return beta * (rewards - mean[idx]) + eps


def no_groups(rewards, *, strata=None):
    return rewards


def no_strata(rewards, group_ids, *, beta=1.0):
    return rewards
"""


@pytest.fixture()
def plugin(tmp_path):
    path = tmp_path / "my_advantages.py"
    path.write_text(PLUGIN)
    return str(path)


def test_plugin_file_estimator_through_the_config(plugin):
    from launch.config import load_config
    from rl.steps import assign_advantages

    cfg = load_config("configs/debug_cpu.yaml", [f"algorithm.advantage.name={plugin}:scaled",
                                                 "algorithm.advantage.params={beta: 0.5}", "algorithm.advantage.eps=0"])
    assert cfg.algorithm.advantage_params() == {"eps": 0.0, "beta": 0.5}  # the `eps` field goes to it by name
    # group 0 rewards [1, 0, 0, 1] (mean 0.5), group 1 [1, 0] (mean 0.5): 0.5 · (r − 0.5) = ±0.25
    samples = [Sample(0, g, [1], [2], [-1.0], "stop", 0, reward=r) for g, r in ((0, 1.0), (0, 0.0), (0, 0.0),
                                                                               (0, 1.0), (1, 1.0), (1, 0.0))]
    m = assign_advantages(samples, cfg.algorithm)
    assert [s.advantage for s in samples] == [0.25, -0.25, -0.25, 0.25, 0.25, -0.25]
    assert m == {"actor/zero_adv_group_frac": 0.0, "actor/advantage_abs_mean": 0.25}
    fn = resolve_advantage(f"{plugin}:scaled").fn  # the resolved function is accepted as well as its spec
    r, g = t([1.0, 0.0]), one_group(2)
    assert compute_advantages(fn, r, g, beta=2.0).tolist() == compute_advantages(f"{plugin}:scaled", r, g, beta=2.0).tolist()


def test_plugin_params_are_checked_at_startup(plugin, tmp_path):
    from launch.config import ConfigError, load_config
    from launch.prepare import prepare

    def cfg(*overrides):
        return load_config("configs/debug_cpu.yaml", [f"model.cache_dir={tmp_path / 'no_models_here'}", *overrides])

    unknown = cfg(f"algorithm.advantage.name={plugin}:scaled", "algorithm.advantage.params={beta: 1.0, gama: 2}")
    with pytest.raises(ConfigError, match="algorithm.advantage.params=.*got unknown params \\['gama'\\]; it accepts "
                                          "\\['beta', 'eps'\\]"):
        prepare(unknown)  # before any data or model is loaded
    with pytest.raises(ConfigError, match="needs params \\['beta'\\].*algorithm.advantage.params=\\{beta: ...\\}"):
        prepare(cfg(f"algorithm.advantage.name={plugin}:scaled"))
    with pytest.raises(ConfigError, match="my_advantages.py has no attribute 'scaeld'; did you mean 'scaled'"):
        prepare(cfg(f"algorithm.advantage.name={plugin}:scaeld"))
    with pytest.raises(ConfigError, match="does not exist"):
        prepare(cfg(f"algorithm.advantage.name={tmp_path / 'missing.py'}:scaled"))


@pytest.mark.parametrize("fn, problem", [
    ("no_groups", "it takes positional params \\['rewards'\\]; it must take exactly two, \\(rewards, group_ids\\)"),
    ("no_strata", "it must take the keyword-only param `strata=None`"),
])
def test_plugin_with_a_bad_signature_is_an_error_before_any_model_loads(plugin, tmp_path, fn, problem):
    from launch.config import ConfigError, load_config
    from launch.prepare import prepare

    cfg = load_config("configs/debug_cpu.yaml", [f"algorithm.advantage.name={plugin}:{fn}",
                                                 f"model.cache_dir={tmp_path / 'no_models_here'}"])
    with pytest.raises(ConfigError, match=f"algorithm.advantage.name=.*{fn}.*does not fit fn\\(rewards .*{problem}"):
        prepare(cfg)
    with pytest.raises(TypeError, match=problem):
        compute_advantages(f"{plugin}:{fn}", t([1.0]), one_group(1))
    assert not (tmp_path / "no_models_here").exists()

