"""Multi-turn tool use through the whole loop: local Ray, the rollout worker's sandboxed tool processes, the reward
sandbox, 2 DeepSpeed ranks, stratified advantages by tool-call count, and the outputs that show the trajectories.

The model is the tiny one trained in code to call the calculator (tests/tool_model.py), so its trajectories do call
tools: the tool tokens must reach the trainer masked, and samples.jsonl must show each call and its observation.
"""

from __future__ import annotations

import json

import pytest

from launch.cluster import create_workers
from launch.loop import Driver
from launch.prepare import prepare
from tests.tool_model import PROBLEMS, build_tool_model, prompt

from .conftest import debug_config

pytestmark = pytest.mark.slow


DAPO = ("algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.metric=acc",
        "algorithm.dynamic_sampling.max_rounds=3", "algorithm.overlong.shaping=true", "algorithm.overlong.buffer=16",
        "algorithm.replay.enable=true", "algorithm.loss.tis_level=token", "algorithm.loss.clip_ratio_c=10.0",
        "trainer.mini_batches=2")


@pytest.mark.parametrize("algorithm", [(), DAPO], ids=["stratified", "stratified+dapo+replay+tis"])
def test_tool_rollouts_train_with_tool_tokens_masked_and_show_their_calls(ray_cluster, tmp_path, algorithm):
    model = build_tool_model(tmp_path / "tool_model")
    data = tmp_path / "calc.jsonl"
    data.write_text("".join(json.dumps({"prompt": prompt(e), "answer": v}) + "\n" for e, v in PROBLEMS * 4))
    cfg = debug_config(tmp_path, f"model.path={model}", f"data.train={data}", f"data.eval={data}",
                       "data.chat_template=false", "data.eval_size=2", "reward.fns=[arith]",
                       "rollout.tools=[calculator]", "rollout.tool_format=tag", "rollout.tool_instructions=null", "rollout.max_turns=3",
                       "rollout.max_new_tokens=96", "rollout.tool_workers=1", "trainer.lr=1e-4",
                       "rollout.group_size=8", "logging.samples_per_step=16", "trainer.train_prompts=2",
                       "trainer.total_steps=2", "trainer.eval_every=2", "trainer.save_every=0",
                       "algorithm.advantage.name=stratified", "algorithm.advantage.strata_source=tool_calls", *algorithm)
    prep = prepare(cfg)
    assert [r["prompt_text"] for r in prep.train_rows[:2]] == [prompt(e) for e, _ in PROBLEMS]  # as trained on
    workers = create_workers(cfg, prep.model_path, str(tmp_path))
    driver = Driver(cfg, prep, workers)
    try:
        driver.train()
    finally:
        driver.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["step"] >= 1 and "rollout/tool_calls_mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["rollout/tool_call_rate"] > 0 and 0 < r["rollout/tool_token_frac"] < 1
    assert "eval/tool_call_rate" in records[-1]
    written = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(written) == 32  # every sample of both steps (2 prompts x 8)
    if algorithm:  # dynamic sampling may take several rounds and replay adds rows: the token count is checked on
        for r in steps:  # the plain run; here the machinery must run on tool samples and train
            assert "actor/tis_ess" in r and r["rollout/tool_call_rate"] > 0
            # the IS ratios are of sampled tokens only: a tool token's placeholder logprob (0.0) would put |log
            # ratio| in the units; engine and trainer in fp32 agree to about 1e-6
            assert r["actor/tis_log_ratio_abs_mean"] < 1e-3
        assert any(r.get("actor/num_tokens") for r in steps)
        return
    for r in steps:
        # the token-mean counts the sampled tokens of the trained samples, never a tool token
        trained = [s for s in written if s["step"] == r["step"] and s["advantage"]]
        sampled = sum(s["response_tokens"] - sum(c["end"] - c["start"] for c in s.get("tool_calls") or [])
                      for s in trained)
        assert r.get("actor/num_tokens", 0.0) == sampled
    assert any(r.get("actor/num_tokens") for r in steps), "no step trained: nothing was checked"
    called = [s for s in written if s.get("tool_calls")]
    assert called and all(s["turns"] >= 2 for s in called)
    for s in called:
        c = s["tool_calls"][0]
        assert c["name"] == "calculator" and c["status"] in ("ok", "error")
        assert f"<result>{c['observation']}</result>" in s["completion"]
