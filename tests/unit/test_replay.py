"""rl/replay.py: the worked vectors of docs/algorithms.md "Replay buffer" (priorities, SSR top-up, staleness
weights of replayed rows through rl.losses.importance_weights), sampling frequencies, admission, eviction, age decay, PER weights, metrics, and an exact checkpoint
round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch

from launch import checkpoint
from rl.loss_config import LossConfig, LossInputs
from rl.losses import importance_weights
from rl.replay import (ReplayBuffer, per_weights, ratio_count, replay_metrics, rng_state, set_rng_state,
                       topup_count)
from rl.types import Sample


def make(adv: float | None, *, version: int = 0, n_tokens: int = 3, finish: str = "stop", status: str = "ok",
         pid: int = 0) -> Sample:
    ids = list(range(10, 10 + n_tokens))
    return Sample(prompt_id=pid, group_id=pid // 4, prompt_ids=[1, 2], response_ids=ids,
                  rollout_logprobs=[-0.5] * n_tokens, finish_reason=finish, policy_version=version,
                  reward=1.0, reward_status=status, stratum="s", advantage=adv)


def buffer_of(advs: list[float], **kw) -> ReplayBuffer:
    buf = ReplayBuffer(capacity=kw.pop("capacity", 100), **kw)
    buf.add([make(a, pid=i) for i, a in enumerate(advs)])
    return buf


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- worked vectors

@pytest.mark.parametrize("alpha, expected", [
    (0.0, [1 / 3, 1 / 3, 1 / 3]),
    (1.0, [0.166667, 0.5, 0.333333]),      # 0.5/3, 1.5/3, 1/3
    (2.0, [0.071429, 0.642857, 0.285714]),  # 0.25/3.5, 2.25/3.5, 1/3.5
])
def test_priority_vectors(alpha, expected):
    # |Â| = [0.5, 1.5, 1.0]; the sign of the advantage does not matter
    buf = buffer_of([0.5, -1.5, 1.0], alpha=alpha)
    torch.testing.assert_close(buf.probabilities(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(buf.priorities(), torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64) ** alpha)


def test_topup_and_ratio_counts():
    assert topup_count(8, 5) == 3  # SSR Algorithm 1: N_batch = 8, 5 effective -> n_buf = 3
    assert topup_count(8, 8) == 0 and topup_count(8, 11) == 0 and topup_count(0, 0) == 0
    assert ratio_count(4, 0.5) == 4 and ratio_count(6, 0.25) == 2 and ratio_count(5, 0.0) == 0
    with pytest.raises(ValueError, match="must be >= 0"):
        topup_count(-1, 0)
    with pytest.raises(ValueError, match=r"ratio=1.0 must be in \[0, 1\)"):
        ratio_count(4, 1.0)


def _replay_weights(old, mu, mask, replayed, cap, level="token"):
    """The trainer's weights for replayed rows: TIS on the replayed rows only (rl.losses.importance_weights)."""
    cfg = LossConfig(tis_level=level, tis_cap=cap, tis_scope="replayed")
    adv = torch.zeros(old.shape[0])
    return importance_weights(LossInputs(old, adv, mask, rollout_logprobs=mu, replayed=replayed), cfg, mask)


def test_staleness_weight_vector():
    # π_μ = [0.6, 0.3, 0.05] (rollout engine at generation), π_old = [0.7, 0.1, 0.2]
    # w = π_old/π_μ = [7/6, 1/3, 4]; min(w, 2) = [7/6, 1/3, 2]
    mu = torch.tensor([[0.6, 0.3, 0.05]]).log()
    old = torch.tensor([[0.7, 0.1, 0.2]]).log()
    mask = torch.ones(1, 3)
    w, m = _replay_weights(old, mu, mask, torch.ones(1, 3, dtype=torch.bool), cap=1e9)
    torch.testing.assert_close(w, torch.tensor([[1.166667, 0.333333, 4.0]]), atol=1e-5, rtol=0)
    w2, m2 = _replay_weights(old, mu, mask, torch.ones(1, 3, dtype=torch.bool), cap=2.0)
    torch.testing.assert_close(w2, torch.tensor([[1.166667, 0.333333, 2.0]]), atol=1e-5, rtol=0)
    assert not w2.requires_grad
    # ESS before truncation, as a fraction: (Σw)²/(n·Σw²) = 5.5² / (3·(49/36 + 1/9 + 16)) = 30.25 / 52.416667
    assert m2["actor/tis_ess"] == pytest.approx(30.25 / (3 * (49 / 36 + 1 / 9 + 16)), rel=1e-5)
    assert m2["actor/tis_truncated_frac"] == pytest.approx(1 / 3)  # only w = 4 exceeds C = 2
    assert m["actor/tis_truncated_frac"] == 0.0  # a cap above every weight truncates nothing
    # mean |log w| = (log 7/6 + log 3 + log 4) / 3
    assert m2["actor/tis_log_ratio_abs_mean"] == pytest.approx((math.log(7 / 6) + math.log(3) + math.log(4)) / 3,
                                                               rel=1e-5)


def test_staleness_weights_only_on_replayed_rows_mask_and_sequence_level():
    old = torch.tensor([[0.7, 0.1, 0.2], [0.5, 0.5, 0.0], [0.5, 0.5, 0.5]]).log()
    mu = torch.tensor([[0.6, 0.3, 0.05], [0.2, 1.0, 1.0], [0.1, 0.1, 0.1]]).log()
    old[1, 2] = mu[1, 2] = 0.0  # padding holds finite values
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # row 2's last token is padding
    replayed = torch.tensor([[True] * 3, [True] * 3, [False] * 3])  # row 3 is fresh: weight 1, whatever its ratio
    w, m = _replay_weights(old, mu, mask, replayed, cap=2.0)
    assert not w.requires_grad and w[1, 2] == 0 and torch.isfinite(w).all()
    torch.testing.assert_close(w[1, :2], torch.tensor([2.0, 0.5]))  # min(2.5, 2), 0.5
    torch.testing.assert_close(w[2], torch.ones(3))
    assert m["actor/tis_truncated_frac"] == pytest.approx(2 / 5)  # of the 5 replayed tokens, w = 4 and w = 2.5
    # sequence level: row 1 exp(Σ log w) = 7/6 · 1/3 · 4 = 14/9 (< 2, kept); row 2 = 2.5 · 0.5 = 1.25
    ws, ms = _replay_weights(old, mu, mask, replayed, cap=2.0, level="sequence")
    torch.testing.assert_close(ws, torch.tensor([[14 / 9] * 3, [1.25, 1.25, 0.0], [1.0] * 3]), atol=1e-5, rtol=0)
    assert ms["actor/tis_ess"] == pytest.approx((14 / 9 + 1.25) ** 2 / (2 * ((14 / 9) ** 2 + 1.25 ** 2)), rel=1e-5)


# ----------------------------------------------------------------------------- sampling

def test_sampling_frequencies_match_priorities():
    # seeded: deterministic. 20000 draws over 4 entries; chi-square against the expected counts
    advs = [0.5, 1.5, 1.0, 2.0]
    buf = buffer_of(advs, alpha=1.0)
    n = 20000
    samples, probs = buf.sample(n, gen(1234))
    assert len(samples) == n and probs.shape == (n,)
    counts = torch.zeros(4, dtype=torch.float64)
    for s in samples:
        counts[s.prompt_id] += 1
    expected = torch.tensor(advs, dtype=torch.float64) / sum(advs) * n
    stat = float(((counts - expected) ** 2 / expected).sum())
    try:
        from scipy.stats import chisquare
        assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    except ImportError:
        pass
    assert stat < 16.27  # χ²(df=3) at p = 0.001
    # the returned P(j) is that of the drawn entry
    p = buf.probabilities()
    assert all(probs[k] == p[s.prompt_id] for k, s in enumerate(samples[:50]))


def test_sample_edge_cases_and_copies():
    buf = buffer_of([2.0])
    assert buf.sample(0, gen())[0] == []
    # buffer smaller than n: with replacement, the entry repeats
    out, probs = buf.sample(3, gen())
    assert [s.prompt_id for s in out] == [0, 0, 0] and probs.tolist() == [1.0, 1.0, 1.0]
    # copies: the caller mutating the original or a draw does not change the stored advantage
    buf.entries[0].sample.advantage = None
    out[0].advantage = 99.0
    again, _ = buf.sample(1, gen())
    assert again[0].advantage == 2.0 and again[0] is not buf.entries[0].sample
    # empty buffer with n > 0: nothing drawn, the shortfall counted
    empty = ReplayBuffer(4)
    s, p = empty.sample(5, gen())
    assert s == [] and p.numel() == 0 and empty.counters["shortfall"] == 5
    with pytest.raises(TypeError, match="torch.Generator"):
        buf.sample(1, rng=None)
    with pytest.raises(ValueError, match="n=-1"):
        buf.sample(-1, gen())


def test_same_seed_same_draws():
    buf = buffer_of([0.5, 1.5, 1.0, 0.1, 3.0])
    a, pa = buf.sample(64, gen(7))
    b, pb = buf.sample(64, gen(7))
    assert [s.prompt_id for s in a] == [s.prompt_id for s in b] and torch.equal(pa, pb)


# ----------------------------------------------------------------------------- admission and eviction

def test_admission_rules():
    buf = ReplayBuffer(100)
    batch = [make(0.5), make(-0.7), make(0.0), make(None), make(float("nan")), make(1.0, n_tokens=0),
             make(1.0, status="timeout"), make(1.0, finish="length")]
    assert buf.add(batch) == 3  # 0.5, -0.7 and the truncated one (drop_truncated is off)
    c = buf.counters
    assert (c["admitted"], c["rejected/zero_advantage"], c["rejected/no_advantage"], c["rejected/empty_response"],
            c["rejected/reward_error"], c["rejected/truncated"]) == (3, 1, 2, 1, 1, 0)
    strict = ReplayBuffer(100, drop_truncated=True)
    assert strict.add(batch) == 2 and strict.counters["rejected/truncated"] == 1
    # stored as given, with the advantage, version and insertion step copied
    e = buf.entries[1]
    assert e.sample is batch[1] and (e.advantage, e.policy_version, e.step) == (-0.7, 0, 0)
    buf.add([make(0.3, version=2)], step=17)
    assert (buf.entries[-1].policy_version, buf.entries[-1].step) == (2, 17)


def test_capacity_eviction_is_fifo():
    buf = ReplayBuffer(capacity=3)
    buf.add([make(1.0, pid=i) for i in range(2)])
    buf.add([make(1.0, pid=i) for i in range(2, 5)])
    assert [e.sample.prompt_id for e in buf.entries] == [2, 3, 4] and buf.counters["evicted_capacity"] == 2
    buf.add([make(1.0, pid=i) for i in range(5, 10)])  # more than capacity at once: the newest stay
    assert [e.sample.prompt_id for e in buf.entries] == [7, 8, 9] and buf.counters["evicted_capacity"] == 7


def test_staleness_eviction():
    buf = ReplayBuffer(capacity=100, max_staleness=1)
    buf.add([make(1.0, version=v, pid=v) for v in (0, 1, 2, 0)])
    assert buf.evict_stale(2) == 2  # ages 2, 1, 0, 2: the version-0 ones go
    assert [e.policy_version for e in buf.entries] == [1, 2]
    # sample() evicts before drawing: at version 3 only the version-2 entry is young enough
    out, _ = buf.sample(20, gen(), current_version=3)
    assert {s.policy_version for s in out} == {2} and len(buf) == 1 and buf.counters["evicted_stale"] == 3
    assert ReplayBuffer(10).evict_stale(5) == 0  # no limit: nothing evicted
    with pytest.raises(ValueError, match="needs current_version|need current_version"):
        buf.sample(1, gen())
    with pytest.raises(ValueError, match="current_version=1 is older"):
        buf.evict_stale(1)


def test_age_decay():
    # same |Â|, versions 0 and 2, λ = 0.5 at v_now = 2: p = [0.25, 1] -> P = [0.2, 0.8]
    buf = ReplayBuffer(10, age_decay=0.5)
    buf.add([make(1.0, version=0), make(1.0, version=2)])
    torch.testing.assert_close(buf.probabilities(current_version=2), torch.tensor([0.2, 0.8], dtype=torch.float64))
    torch.testing.assert_close(buf.priorities(current_version=2), torch.tensor([0.25, 1.0], dtype=torch.float64))
    # α and δ combine: (|Â| + δ)^α λ^age with |Â| = [1, 3], δ = 1, α = 2 -> [4·0.25, 16·1] -> [1/17, 16/17]
    buf2 = ReplayBuffer(10, alpha=2.0, delta=1.0, age_decay=0.5)
    buf2.add([make(1.0, version=0), make(-3.0, version=2)])
    torch.testing.assert_close(buf2.probabilities(2), torch.tensor([1 / 17, 16 / 17], dtype=torch.float64))
    # very old entries: the log-space softmax does not underflow to 0/0
    buf3 = ReplayBuffer(10, age_decay=1e-3)
    buf3.add([make(1.0, version=0), make(1.0, version=0)])
    torch.testing.assert_close(buf3.probabilities(10_000), torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("kw, match", [
    (dict(capacity=0), "capacity=0 must be an int >= 1"),
    (dict(capacity=2.5), "capacity=2.5"),
    (dict(capacity=4, alpha=-1.0), "alpha=-1.0 must be >= 0"),
    (dict(capacity=4, delta=-0.1), "delta=-0.1 must be >= 0"),
    (dict(capacity=4, age_decay=0.0), r"age_decay=0.0 must be in \(0, 1\]"),
    (dict(capacity=4, age_decay=1.5), r"age_decay=1.5"),
    (dict(capacity=4, max_staleness=-1), "max_staleness=-1 must be an int >= 0"),
])
def test_bad_params(kw, match):
    with pytest.raises(ValueError, match=match):
        ReplayBuffer(**kw)


# ----------------------------------------------------------------------------- PER weights and metrics

def test_per_weights():
    probs = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    # β = 1: N·P = [0.3, 0.9, 1.8] -> 1/x = [3.333, 1.111, 0.556] -> / max = [1, 1/3, 1/6]
    torch.testing.assert_close(per_weights(probs, 3, 1.0), torch.tensor([1.0, 1 / 3, 1 / 6], dtype=torch.float64))
    # β = 0.5: the square roots, [1, 0.577350, 0.408248]
    torch.testing.assert_close(per_weights(probs, 3, 0.5), torch.tensor([1.0, 0.577350, 0.408248], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert per_weights(probs, 3, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert per_weights(torch.full((4,), 0.25, dtype=torch.float64), 4, 1.0).tolist() == [1.0] * 4
    # β = 1 undoes the prioritisation: P(j)·u_j is the same for every j (∝ the uniform 1/N)
    pu = probs * per_weights(probs, 3, 1.0)
    torch.testing.assert_close(pu, torch.full((3,), float(pu[0]), dtype=torch.float64))
    with pytest.raises(ValueError, match=r"beta=1.5 must be in \[0, 1\]"):
        per_weights(probs, 3, 1.5)
    with pytest.raises(ValueError, match="probs must be"):
        per_weights(torch.tensor([0.0, 1.0]), 2, 1.0)


def test_replay_metrics():
    buf = ReplayBuffer(10)
    buf.add([make(1.0, version=3), make(1.0, version=5)])
    replayed = [make(1.0, version=3), make(1.0, version=5), make(1.0, version=5)]
    m = replay_metrics(buf, replayed, n_batch=8, current_version=5, n_requested=3)
    assert m["replay/size"] == 2 and m["replay/fraction"] == 3 / 8
    assert m["replay/mean_staleness"] == pytest.approx(2 / 3) and m["replay/shortfall"] == 0
    assert replay_metrics(ReplayBuffer(1), [], n_batch=0, current_version=0)["replay/fraction"] == 0.0


# ----------------------------------------------------------------------------- checkpoint

def test_state_round_trip_is_exact():
    def build() -> ReplayBuffer:
        return ReplayBuffer(capacity=6, alpha=1.0, delta=0.1, age_decay=0.9, max_staleness=3)

    buf, rng = build(), gen(42)
    for step in range(1, 5):
        buf.add([make((-1) ** k * (0.2 + 0.3 * k), version=step - 1, pid=10 * step + k) for k in range(3)], step=step)
        buf.sample(4, rng, current_version=step - 1)
    # save through the same path as the checkpoint (launch/checkpoint.py: encoded, read back weights_only)
    blob = io.BytesIO()
    torch.save(checkpoint.encode_state({"replay": buf.state_dict(), "replay_rng": rng_state(rng)}), blob)
    blob.seek(0)
    saved = checkpoint.decode_state(torch.load(blob, weights_only=True))

    expected, p_expected = buf.sample(16, rng, current_version=5)  # the uninterrupted run

    resumed, rng2 = build(), torch.Generator()
    resumed.load_state_dict(saved["replay"])
    set_rng_state(rng2, saved["replay_rng"])
    assert resumed.counters == saved["replay"]["counts"]
    assert [(e.sample.prompt_id, e.advantage, e.policy_version, e.step) for e in resumed.entries] == \
           [(s.prompt_id, a, v, t) for s, a, v, t in saved["replay"]["entries"]]
    got, p_got = resumed.sample(16, rng2, current_version=5)
    assert [(s.prompt_id, s.advantage, s.policy_version) for s in got] == \
           [(s.prompt_id, s.advantage, s.policy_version) for s in expected]
    assert torch.equal(p_got, p_expected) and resumed.counters == buf.counters
    assert resumed.state_dict()["counts"] == buf.state_dict()["counts"]


def test_load_state_errors_and_shrunk_capacity():
    with pytest.raises(ValueError, match="not a replay-buffer state"):
        ReplayBuffer(4).load_state_dict({"entries": []})
    with pytest.raises(TypeError, match="uint8 tensor"):
        set_rng_state(gen(), [1, 2, 3])
    big = buffer_of([1.0, 2.0, 3.0, 4.0])
    small = ReplayBuffer(2)
    small.load_state_dict(big.state_dict())
    assert [e.advantage for e in small.entries] == [3.0, 4.0] and small.counters["evicted_capacity"] == 2
