"""The rollout-engine contract against the vLLM engine, plus its three weight transports (needs CUDA and vLLM).

No downloads: a tiny Llama *config* and the code-built character tokenizer are written locally and
vLLM starts with `load_format="dummy"`; the test then loads the weights of a seeded transformers
model of the same config, so vLLM's outputs can be compared with transformers' on the same weights.
Run on a GPU node: `python -m pytest tests/gpu -v` (about a minute; two GPUs add the NCCL test).
"""

from __future__ import annotations

import socket
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("vllm")

from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from launch.models import build_tokenizer  # noqa: E402
from rl.weight_sync import (TensorMeta, WeightPublisher, bucket_to_wire, ipc_handle, pack_bucket,  # noqa: E402
                            plan_buckets)
from rollout.engine import SamplingParams  # noqa: E402
from rollout.vllm import VLLMEngine  # noqa: E402
from tests import engine_contract as contract  # noqa: E402

pytestmark = pytest.mark.gpu
ATOL = 5e-2
"""bfloat16 noise between vLLM's kernels and transformers' float32 is ~1e-2 on this model; a wrong
temperature moves the sampled tokens' logprobs by ~0.4 here, so the tolerance still catches it."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_llama")
    tok = build_tokenizer()
    # head_dim 64: vLLM's attention kernels want a common head size (the CPU tiny model's 16 is not)
    LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, dtype="bfloat16").save_pretrained(out)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def reference_model(model_dir: Path, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).float().eval()


def named(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p.detach().clone()) for n, p in model.named_parameters()]


@torch.no_grad()
def hf_score(model, prompts, responses, temperature) -> list[list[float]]:
    out = []
    for p, r in zip(prompts, responses):
        logits = model(torch.tensor([p + r])).logits[0].float() / temperature
        logp = torch.log_softmax(logits, -1)
        out.append([float(logp[len(p) + i - 1, t]) for i, t in enumerate(r)])
    return out


@pytest.fixture(scope="module")
def reference(model_dir):
    return reference_model(model_dir, seed=0)


@pytest.fixture(scope="module")
def engine(model_dir, reference):
    e = VLLMEngine(str(model_dir), dtype="bfloat16", load_format="dummy", gpu_memory_utilization=0.25,
                   max_model_len=512, enforce_eager=True, enable_sleep_mode=True, batch_size=64, seed=0,
                   sync_timeout_s=120)
    e.load_weights(named(reference))  # known weights instead of the dummy loader's noise
    yield e
    e.llm.llm_engine.engine_core.shutdown()


CHECKS = {
    "shapes_and_order": contract.check_shapes_and_order,
    "logprobs_match_scoring": partial(contract.check_logprobs_match_scoring, atol=ATOL),
    "seeded_determinism": contract.check_seeded_determinism,
    "greedy_is_argmax": contract.check_greedy_is_argmax,
    "max_tokens_truncates": contract.check_max_tokens_truncates,
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_contract(engine, name):
    CHECKS[name](engine, engine.tokenizer)


def test_weight_update_changes_outputs(engine, reference):
    contract.check_weight_update_changes_outputs(engine, engine.tokenizer, named(reference))


def test_scores_match_transformers_on_the_same_weights(engine, reference):
    prompts = contract.prompts_of(engine.tokenizer)
    outs = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=8, temperature=0.7, seed=3))
    p, r = [prompts[o.prompt_index] for o in outs], [o.response_ids for o in outs]
    expected = hf_score(reference, p, r, 0.7)
    for o, e in zip(outs, expected):  # the sampled tokens' logprobs are at the sampling temperature
        assert torch.allclose(torch.tensor(o.logprobs), torch.tensor(e), atol=ATOL)
    for s, e in zip(engine.score(p, r, 0.7), expected):
        assert torch.allclose(torch.tensor(s), torch.tensor(e), atol=ATOL)


def test_stop_string_keeps_the_generated_tokens(engine):
    tok = engine.tokenizer
    prompts = contract.prompts_of(tok)
    free = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=3))
    stop = next(ch for o in free for ch in tok.decode(o.response_ids) if ch.isalnum())
    for o in engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=3, stop=[stop])):
        if o.finish_reason == "stop" and o.response_ids[-1] != tok.eos_token_id:
            assert tok.decode(o.response_ids).endswith(stop)  # the stop token is kept, not re-tokenised away
            assert len(o.logprobs) == len(o.response_ids)


def load_by_ipc(engine: VLLMEngine, weights: list[tuple[str, torch.Tensor]]) -> None:
    """What trainer rank 0 does in colocated mode, with this process as the trainer on the same GPU."""
    plan = plan_buckets([TensorMeta(n, "bfloat16", tuple(t.shape)) for n, t in weights], bucket_bytes=1 << 18)
    by_name = dict(weights)
    for bucket in plan:
        flat = pack_bucket([by_name[m.name] for m in bucket.tensors], bucket, "cuda")
        engine.load_ipc_bucket(bucket_to_wire(bucket), ipc_handle(flat))  # returns once the worker has copied
        del flat
    torch.cuda.ipc_collect()


def test_colocated_sleep_ipc_load_wake(engine, model_dir, reference):
    prompts = contract.prompts_of(engine.tokenizer)
    responses = [[5, 6, 7, 8]] * len(prompts)
    other = reference_model(model_dir, seed=1)
    engine.sleep()  # level 2: weights and KV cache discarded
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(prompts, SamplingParams(max_new_tokens=2))
    load_by_ipc(engine, named(other))
    engine.finish_weight_update()
    for s, e in zip(engine.score(prompts, responses, 1.0), hf_score(other, prompts, responses, 1.0)):
        assert torch.allclose(torch.tensor(s), torch.tensor(e), atol=ATOL)
    assert len(engine.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=0))) == 6
    engine.load_weights(named(reference))


class ThreadReceivers:
    """The rollout side of the NCCL transport, driven from threads of this process."""

    def __init__(self, engine: VLLMEngine, pool: ThreadPoolExecutor):
        self.engine, self.pool, self.pending = engine, pool, None

    def start_broadcast(self, plan_wire) -> None:
        self.pending: Future = self.pool.submit(self.engine.receive_broadcast, plan_wire)

    def wait(self, timeout_s: float) -> None:
        self.pending.result(timeout=timeout_s)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs the trainer and vLLM on different GPUs")
def test_nccl_broadcast_from_a_trainer_on_another_gpu(engine, model_dir, reference):
    trainer_gpu = torch.device("cuda", 1)  # the engine's worker runs on GPU 0
    model = reference_model(model_dir, seed=2).to(trainer_gpu, torch.bfloat16)
    publisher = WeightPublisher(model, "nccl", zero_stage=0, rank=0, device=trainer_gpu, dtype=torch.bfloat16,
                                timeout_s=120, bucket_bytes=1 << 18)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ThreadPoolExecutor(2) as pool:
        joined = pool.submit(engine.init_weight_group, "127.0.0.1", port, 1, 2)
        publisher.connect_nccl("127.0.0.1", port, 2)
        joined.result(timeout=120)
        publisher.publish(ThreadReceivers(engine, pool))
    prompts = contract.prompts_of(engine.tokenizer)
    responses = [[5, 6, 7, 8]] * len(prompts)
    expected = hf_score(model.float().cpu(), prompts, responses, 1.0)
    for s, e in zip(engine.score(prompts, responses, 1.0), expected):
        assert torch.allclose(torch.tensor(s), torch.tensor(e), atol=ATOL)
    engine.load_weights(named(reference))
