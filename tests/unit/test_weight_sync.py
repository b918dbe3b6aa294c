"""Weight sync on CPU (rl/weight_sync.py): bucket plans, packing, the publisher's data path, deadlines.

The GPU transports differ from these tests only in who moves the flat buffer (NCCL, CUDA IPC);
tests/gpu/test_vllm_engine.py covers those. Here a fake broadcaster hands each packed bucket to a
fake receiver that unpacks it into a second model, so names, shapes, offsets, dtypes and bucket
boundaries are checked end to end against a real transformers model. The vLLM end of the object-store
transport runs against a stand-in for `vllm.LLM` (vLLM has no CPU build) that executes the real
worker extension in-process.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import types

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rl.weight_sync import (ALIGN, Deadline, TensorMeta, WeightPublisher, WeightSyncTimeout, choose_transport,
                            gather_buckets, iter_packed_buckets, pack_bucket, param_metas, plan_buckets,
                            plan_from_wire, plan_to_wire, unpack_bucket, wait_until, with_deadline)


def tiny(seed: int, tie: bool = True) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the test process's RNG
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def load_into(model: torch.nn.Module, named) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in named:
            params[name].copy_(t)


def same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> bool:
    pb = dict(b.named_parameters())
    return all(torch.allclose(p, pb[n], atol=atol, rtol=0) for n, p in a.named_parameters())


# -- plans ----------------------------------------------------------------------------------------
def metas(*sizes: int, dtype: str = "float32") -> list[TensorMeta]:
    return [TensorMeta(f"w{i}", dtype, (n,)) for i, n in enumerate(sizes)]


def test_plan_keeps_order_bounds_buckets_and_aligns_offsets():
    plan = plan_buckets(metas(10, 100, 30, 5, 64), bucket_bytes=512)  # float32: 40, 400, 120, 20, 256 bytes
    assert [m.name for b in plan for m in b.tensors] == ["w0", "w1", "w2", "w3", "w4"]
    # w0 at 0, w1 at 256 (aligned) ends at 656 > 512: new bucket; w1 400 + align(400)=512 + 120 > 512: new bucket
    assert [[m.name for m in b.tensors] for b in plan] == [["w0"], ["w1"], ["w2", "w3"], ["w4"]]
    for b in plan:
        assert all(m.offset % ALIGN == 0 for m in b.tensors)
        assert b.nbytes == b.tensors[-1].offset + b.tensors[-1].nbytes <= 512
    assert plan[2].tensors[1].offset == 256


def test_a_tensor_larger_than_a_bucket_travels_alone():
    plan = plan_buckets(metas(4, 1000, 4), bucket_bytes=1024)
    assert [[m.name for m in b.tensors] for b in plan] == [["w0"], ["w1"], ["w2"]]
    assert plan[1].nbytes == 4000
    assert plan_buckets([], 1024) == []
    with pytest.raises(ValueError, match="at least 256"):
        plan_buckets(metas(1), bucket_bytes=16)


def test_wire_form_is_plain_data_and_round_trips():
    plan = plan_buckets([TensorMeta("a.weight", "bfloat16", (3, 4)), TensorMeta("b", "float32", ())], 4096)
    wire = plan_to_wire(plan)
    assert json.loads(json.dumps(wire)) == wire  # msgpack/pickle-safe: lists, str, int only
    assert plan_from_wire(wire) == plan


def test_param_metas_reads_full_zero3_shapes_and_the_wire_dtype():
    model = tiny(0)
    p = dict(model.named_parameters())["model.norm.weight"]
    p.ds_shape = torch.Size([32])  # a ZeRO-3 partition reports its full shape here
    p.data = torch.empty(0)
    got = {m.name: m for m in param_metas(model, torch.bfloat16)}
    assert got["model.norm.weight"].shape == (32,) and got["model.norm.weight"].nbytes == 32 * 2
    assert got["model.embed_tokens.weight"] == TensorMeta("model.embed_tokens.weight", "bfloat16", (50, 32))
    assert "lm_head.weight" not in got  # tied: sent once, under the embedding's name
    assert "lm_head.weight" in {m.name for m in param_metas(tiny(0, tie=False))}


# -- packing --------------------------------------------------------------------------------------
def test_pack_unpack_round_trip_converts_to_the_wire_dtype():
    tensors = [torch.randn(3, 5), torch.randn(7), torch.tensor(2.5)]
    bucket = plan_buckets([TensorMeta(f"t{i}", "bfloat16", tuple(t.shape)) for i, t in enumerate(tensors)], 4096)[0]
    flat = pack_bucket(tensors, bucket, "cpu")
    assert flat.dtype == torch.uint8 and flat.numel() == bucket.nbytes
    for (name, view), t in zip(unpack_bucket(flat, bucket), tensors):
        assert view.dtype == torch.bfloat16 and torch.equal(view, t.to(torch.bfloat16))
        assert view.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()  # views, no copies


def test_pack_refuses_a_tensor_that_does_not_match_the_plan():
    bucket = plan_buckets(metas(4), 1024)[0]
    with pytest.raises(ValueError, match=r"w0 has shape \(5,\), the plan says \(4,\)"):
        pack_bucket([torch.zeros(5)], bucket, "cpu")
    with pytest.raises(ValueError, match="2 tensors for a bucket planned with 1"):
        pack_bucket([torch.zeros(4), torch.zeros(4)], bucket, "cpu")
    with pytest.raises(ValueError, match="buffer of 3 bytes"):
        unpack_bucket(torch.zeros(3, dtype=torch.uint8), bucket)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 0.0), (torch.bfloat16, 1e-2)])
def test_packed_buckets_rebuild_the_model(dtype, atol):
    src, dst = tiny(0), tiny(1)
    assert not same_weights(src, dst, atol=1e-3)
    plan = plan_buckets(param_metas(src, dtype), bucket_bytes=4096)  # small: many buckets, one tensor alone
    assert len(plan) > 3
    for bucket, flat in zip(plan, iter_packed_buckets(src, plan, zero_stage=0, device="cpu")):
        load_into(dst, unpack_bucket(flat, bucket))
    assert same_weights(src, dst, atol=atol)
    assert all(f is None for f in iter_packed_buckets(src, plan, zero_stage=0, device="cpu", keep=False))


def test_object_store_buckets_follow_the_plan_of_the_gpu_transports():
    model = tiny(0)
    buckets = list(gather_buckets(model, zero_stage=0, bucket_bytes=4096))
    plan = plan_buckets(param_metas(model), bucket_bytes=4096)
    assert [[n for n, _ in b] for b in buckets] == [[m.name for m in b.tensors] for b in plan] and len(plan) > 3
    named = [(n, t) for b in buckets for n, t in b]
    assert [n for n, _ in named] == [n for n, _ in model.named_parameters()]  # tied lm_head once, as embed_tokens
    assert all(t.device.type == "cpu" and torch.equal(t, dict(model.named_parameters())[n]) for n, t in named)
    wire = list(gather_buckets(model, zero_stage=0, bucket_bytes=4096, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for b in wire for _, t in b)
    # other ranks join every bucket's gather (ZeRO-3 collectives) but copy nothing
    assert list(gather_buckets(model, zero_stage=0, bucket_bytes=4096, keep=False)) == [[]] * len(plan)


def test_object_store_buckets_own_their_memory():
    """DeepSpeed ZeRO 1-2 make every parameter a view into one flat buffer; a bucket that held such views would
    pickle (ray.put) the whole buffer, the full model per bucket. gather_buckets' tensors own just their bytes."""
    import pickle

    model = tiny(0)
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:  # re-point each parameter into the flat buffer, as DeepSpeed's flattening does
        p.data = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    for bucket in gather_buckets(model, zero_stage=0, bucket_bytes=4096):
        wire = sum(t.numel() * t.element_size() for _, t in bucket)
        assert len(pickle.dumps(bucket)) < wire + 4096 < flat.numel() * flat.element_size() // 2


@pytest.mark.parametrize("transport", ["object_store", "packed"])
def test_buckets_are_sized_by_the_dtype(transport):
    """Eight 16×16 weights: 1 KiB each in float32, 512 B in bfloat16; a 2 KiB bucket holds 2 or 4 of them
    (sizing every tensor at 4 bytes per element would cut both models alike)."""
    def sizes(dtype: torch.dtype) -> list[int]:
        model = torch.nn.Sequential(*[torch.nn.Linear(16, 16, bias=False) for _ in range(8)]).to(dtype)
        if transport == "object_store":
            return [len(b) for b in gather_buckets(model, zero_stage=0, bucket_bytes=2048)]
        return [len(b.tensors) for b in plan_buckets(param_metas(model), bucket_bytes=2048)]

    assert sizes(torch.float32) == [2, 2, 2, 2]
    assert sizes(torch.bfloat16) == [4, 4]


# -- the publisher's NCCL path with a fake broadcaster ----------------------------------------------
class FakeReceivers:
    """Stands for the rollout workers: receives each broadcast bucket into `model`."""

    def __init__(self, model: torch.nn.Module, fail: Exception | None = None):
        self.model, self.fail, self.plan, self.received, self.waited = model, fail, None, 0, False

    def start_broadcast(self, plan_wire):
        self.plan = plan_from_wire(plan_wire)

    def receive(self, flat: torch.Tensor) -> None:
        load_into(self.model, unpack_bucket(flat.clone(), self.plan[self.received]))
        self.received += 1

    def wait(self, timeout_s: float) -> None:
        self.waited = True
        if self.fail is not None:
            raise self.fail
        if self.received < len(self.plan):  # what the Ray receivers do when the sends never came
            raise Deadline(timeout_s, "the receivers").error()


def test_publisher_streams_every_bucket_to_the_receivers():
    src, dst = tiny(0), tiny(1)
    pub = WeightPublisher(src, "nccl", zero_stage=0, rank=0, device=torch.device("cpu"), dtype=None,
                          timeout_s=30, bucket_bytes=4096)
    receivers = FakeReceivers(dst)
    pub.broadcast = lambda flat, deadline: receivers.receive(flat)
    pub.publish(receivers)
    assert receivers.waited and receivers.received == len(pub.plan) > 3
    assert same_weights(src, dst)


def test_non_sender_ranks_only_join_the_gathers():
    pub = WeightPublisher(tiny(0), "nccl", zero_stage=0, rank=1, device=torch.device("cpu"), dtype=None, timeout_s=30)
    pub.broadcast = lambda flat, deadline: pytest.fail("rank 1 must not send")
    pub.publish(None)


def test_a_failed_receiver_explains_a_broadcast_timeout():
    pub = WeightPublisher(tiny(0), "nccl", zero_stage=0, rank=0, device=torch.device("cpu"), dtype=None, timeout_s=30)

    def stuck(flat, deadline):
        raise Deadline(0.0, "the NCCL weight broadcast").error()

    pub.broadcast = stuck
    with pytest.raises(RuntimeError, match="vLLM worker died"):
        pub.publish(FakeReceivers(tiny(1), fail=RuntimeError("vLLM worker died")))
    with pytest.raises(WeightSyncTimeout, match="NCCL weight broadcast did not finish"):
        pub.publish(FakeReceivers(tiny(1)))


def test_sender_must_be_connected():
    pub = WeightPublisher(tiny(0), "nccl", zero_stage=0, rank=0, device=torch.device("cpu"), dtype=None, timeout_s=30)
    with pytest.raises(RuntimeError, match="connect_nccl"):
        pub.publish(FakeReceivers(tiny(1)))
    with pytest.raises(ValueError, match="nccl and ipc"):
        WeightPublisher(tiny(0), "object_store", zero_stage=0, rank=0, device=torch.device("cpu"), dtype=None,
                        timeout_s=1)


# -- deadlines ------------------------------------------------------------------------------------
def test_deadline_counts_down_and_says_what_to_do():
    now = [100.0]
    d = Deadline(5.0, "the test sync", clock=lambda: now[0])
    assert d.remaining() == 5.0
    d.check()
    now[0] = 106.0
    assert d.remaining() == 0.0
    with pytest.raises(WeightSyncTimeout) as e:
        d.check()
    assert "the test sync did not finish within 5 s" in str(e.value)
    assert "rollout.sync_timeout_s" in str(e.value) and "object_store" in str(e.value)


def test_with_deadline_returns_raises_and_times_out():
    assert with_deadline(lambda: 42, 5.0, "x") == 42
    with pytest.raises(KeyError, match="boom"):
        with_deadline(lambda: {}["boom"], 5.0, "x")
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(WeightSyncTimeout, match="a hung rpc did not finish within 0.2 s"):
        with_deadline(lambda: release.wait(30), 0.2, "a hung rpc")
    assert time.monotonic() - start < 5
    release.set()


def test_wait_until_polls_until_done_or_deadline():
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), Deadline(5.0, "x"))
    with pytest.raises(WeightSyncTimeout, match="a CUDA event"):
        wait_until(lambda: False, Deadline(0.05, "a CUDA event"))


# -- transport choice -----------------------------------------------------------------------------
@pytest.mark.parametrize("requested, engine, placement, on_gpu, expected", [
    ("auto", "hf", "split", False, "object_store"),
    ("auto", "vllm", "split", False, "object_store"),
    ("auto", "hf", "split", True, "object_store"),
    ("auto", "vllm", "split", True, "nccl"),
    ("auto", "vllm", "colocated", True, "ipc"),
    ("object_store", "vllm", "split", True, "object_store"),
    ("nccl", "vllm", "split", True, "nccl"),
    ("ipc", "vllm", "colocated", True, "ipc"),
])
def test_choose_transport(requested, engine, placement, on_gpu, expected):
    assert choose_transport(requested, engine=engine, placement=placement, on_gpu=on_gpu) == expected


@pytest.mark.parametrize("requested, engine, placement, on_gpu, words", [
    ("nccl", "hf", "split", True, "needs rollout.engine=vllm"),
    ("ipc", "vllm", "colocated", False, "on GPUs"),
    ("nccl", "vllm", "colocated", True, "use ipc"),
    ("ipc", "vllm", "split", True, "use nccl"),
    ("gloo", "vllm", "split", True, "one of auto, object_store, nccl, ipc"),
])
def test_choose_transport_refusals(requested, engine, placement, on_gpu, words):
    with pytest.raises(ValueError, match=words):
        choose_transport(requested, engine=engine, placement=placement, on_gpu=on_gpu)


# -- the vLLM end, with a stand-in for vllm.LLM ---------------------------------------------------
class FakeLLM:
    """What weight sync uses of `vllm.LLM`: collective_rpc runs the real worker extension in-process."""

    hang: threading.Event | None = None

    def __init__(self, **kwargs):
        from rollout.vllm import WeightSyncExtension

        self.kwargs, self.calls, self.model = kwargs, [], tiny(1)
        model = self.model

        class Worker(WeightSyncExtension):
            rank, device = 0, torch.device("cpu")

            def get_model(self):
                return types.SimpleNamespace(load_weights=lambda weights: load_into(model, weights))

        self.worker = Worker()

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        if FakeLLM.hang is not None:
            FakeLLM.hang.wait(30)
        self.calls.append(method)
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def sleep(self, level=1):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({tags})")


@pytest.fixture()
def vllm_engine(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    from rollout.vllm import VLLMEngine

    return VLLMEngine(tiny_model_dir, enable_sleep_mode=True, sync_timeout_s=30)


def test_vllm_object_store_path_loads_every_bucket_and_resets_the_prefix_cache(vllm_engine):
    llm = vllm_engine.llm
    assert llm.kwargs["worker_extension_cls"] == "rollout.vllm.WeightSyncExtension"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["enable_sleep_mode"]
    src = tiny(0)
    buckets = list(gather_buckets(src, zero_stage=0, bucket_bytes=4096))
    for bucket in buckets:  # what RolloutWorker.update_weights does with each object-store bucket
        vllm_engine.load_weights(bucket)
    assert same_weights(src, llm.model)
    assert llm.calls == ["rlvr_load_blob", "reset_prefix_cache"] * len(buckets)


def test_vllm_colocated_update_wakes_weights_first_and_the_kv_cache_last(vllm_engine):
    llm = vllm_engine.llm
    vllm_engine.sleep()
    vllm_engine.sleep()  # idempotent
    with pytest.raises(RuntimeError, match="asleep"):
        vllm_engine.score([[1, 2]], [[3]], 1.0)
    vllm_engine.load_weights(named_params := [(n, p.detach()) for n, p in tiny(0).named_parameters()])
    vllm_engine.finish_weight_update()
    assert llm.calls == ["sleep(2)", "wake_up(['weights'])", "rlvr_load_blob", "wake_up(['kv_cache'])",
                         "reset_prefix_cache"]
    assert same_weights(tiny(0), llm.model) and len(named_params) > 0


def test_vllm_rpc_runs_under_the_sync_deadline(vllm_engine):
    vllm_engine.sync_timeout_s = 0.2
    FakeLLM.hang = threading.Event()
    try:
        with pytest.raises(WeightSyncTimeout, match="loading a weight bucket into vLLM did not finish within 0.2 s"):
            vllm_engine.load_weights([("model.norm.weight", torch.ones(32))])
    finally:
        FakeLLM.hang.set()
        FakeLLM.hang = None
