"""Multi-turn tool rollouts on the vLLM engine (needs CUDA and vLLM): the loop of rollout/multiturn.py, unchanged,
over vLLM, with the tiny model trained to call the calculator (tests/tool_model.py, head_dim 64 for vLLM's kernels).

Token in, token out as on the HF engine (tests/unit/test_multiturn.py): vLLM's token ids keep the token that
completed the stop string, and the second turn is fed the first turn's ids and the observation's ids. Greedy
trajectories agree with the HF engine's on the same weights: the model's margins after training are wide (per-token
loss about 0.03), far above bf16 noise (~1e-2 on logprobs).
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("vllm")

from rollout.engine import SamplingParams  # noqa: E402
from rollout.hf_engine import HFEngine  # noqa: E402
from rollout.multiturn import ToolSettings, generate_multiturn  # noqa: E402
from rollout.tool_runner import ToolRunner  # noqa: E402
from rollout.tools import resolve_tools  # noqa: E402
from rollout.vllm import VLLMEngine  # noqa: E402
from tests.tool_model import PROBLEMS, build_tool_model, prompt  # noqa: E402

pytestmark = pytest.mark.gpu


def test_vllm_tool_rollouts_match_the_hf_engine(tmp_path_factory):
    model = build_tool_model(tmp_path_factory.mktemp("tool_model"), hidden_size=256)
    tools = resolve_tools(["calculator"])
    params = SamplingParams(n=1, greedy=True, max_new_tokens=96)
    hf = HFEngine(model, dtype="float32")
    prompts = [hf.tokenizer(prompt(e), add_special_tokens=False)["input_ids"] for e, _ in PROBLEMS]
    engine = VLLMEngine(model, dtype="float32", gpu_memory_utilization=0.2, max_model_len=256, enforce_eager=True,
                        batch_size=16, seed=0, sync_timeout_s=120)
    try:
        with ToolRunner(tools, timeout_s=10, num_workers=1, sandbox="off") as runner:
            ours = generate_multiturn(engine, prompts, params, ToolSettings(tools, fmt="tag"), runner)
            ref = generate_multiturn(hf, prompts, params, ToolSettings(tools, fmt="tag"), runner)
            sampled = generate_multiturn(engine, prompts, SamplingParams(n=4, max_new_tokens=96, seed=1),
                                         ToolSettings(tools, fmt="tag"), runner)
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
    for t, r in zip(ours, ref):
        assert t.calls and t.calls[0]["observation"] == PROBLEMS[t.prompt_index][1]
        assert (t.response_ids, t.mask, t.ended) == (r.response_ids, r.mask, r.ended)
    for t in sampled:  # sampled trajectories: the observation tokens sit where the calls say, masked
        for c in t.calls:
            assert not any(t.mask[c["start"]:c["end"]]) and all(lp == 0.0 for lp in t.logprobs[c["start"]:c["end"]])
        assert len(t.response_ids) == len(t.logprobs) == len(t.mask) <= 96
