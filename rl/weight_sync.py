"""Weight sync: trainer weights become rollout weights here, and only here.

Trainer rank 0 gathers full parameters (ZeRO-3 aware: every rank joins each all-gather) and streams
them in buckets, so peak memory is one bucket of gathered parameters. Transports (`choose_transport`):
- `object_store` (any setup; the CPU default and the GPU fallback): `gather_buckets` yields CPU
  buckets that `rl/trainer.py` puts in Ray's object store (`PublishedWeights`) and
  `rollout/worker.py` streams into `engine.load_weights`;
- `nccl` (GPU, split placement): a bucket is packed into one flat GPU buffer (`pack_bucket`) and
  broadcast over an NCCL group of trainer rank 0 and every vLLM worker (`nccl_group`); the vLLM
  workers unpack views of it and load them in place (`rollout/vllm.py`, WeightSyncExtension);
- `ipc` (GPU, colocated placement): every trainer rank packs the bucket on its own GPU and shares it
  by CUDA IPC with the vLLM worker on the same GPU, which loads it in place.
Every transport cuts by one plan, `plan_buckets` over `param_metas` (names, full shapes, wire dtypes: each
tensor sized by its dtype); a GPU transport's two sides walk the same `BucketPlan`, computed once by the trainer.
Every sync runs under a deadline (`Deadline`, `with_deadline`, `wait_until`) and fails with
`WeightSyncTimeout`, which says what to do, instead of hanging.

This module imports no Ray: `WeightPublisher` drives the rollout side through a small `Receivers`
object that `rl/trainer.py` implements with actor calls, and CPU tests implement with plain calls.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, TypeVar

import torch

Bucket = list[tuple[str, torch.Tensor]]
T = TypeVar("T")


# -- the bucket plan (pure) --------------------------------------------------------------------
ALIGN = 256
"""Byte alignment of every tensor inside a packed bucket: a multiple of every dtype's item size,
so each slice can be viewed as its dtype, and of the 256-byte CUDA allocation granularity."""

DEFAULT_BUCKET_BYTES = 512 << 20
"""Packed bucket size of the GPU transports: large enough that a 32B model needs ~130 NCCL calls,
small enough to fit beside training state (it exists once on the sender and once per receiver)."""


@dataclass(frozen=True)
class TensorMeta:
    name: str
    """Name as in the Hugging Face state dict (what vLLM's `load_weights` expects)."""
    dtype: str
    """Wire dtype, a `torch` attribute name (`bfloat16`)."""
    shape: tuple[int, ...]
    """Full (unpartitioned) shape."""
    offset: int = 0
    """Byte offset inside its bucket's flat buffer."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


@dataclass(frozen=True)
class BucketPlan:
    tensors: tuple[TensorMeta, ...]
    nbytes: int
    """Size of the packed flat buffer (uint8)."""


def _itemsize(dtype: str) -> int:
    return getattr(torch, dtype).itemsize


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_buckets(metas: list[TensorMeta], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[BucketPlan]:
    """Cut `metas` (in order) into buckets of at most `bucket_bytes`; a larger tensor gets a bucket alone."""
    if bucket_bytes < ALIGN:
        raise ValueError(f"bucket_bytes={bucket_bytes}: must be at least {ALIGN}")
    plans: list[BucketPlan] = []
    current: list[TensorMeta] = []
    size = 0
    for meta in metas:
        start = _align(size)
        if current and start + meta.nbytes > bucket_bytes:
            plans.append(BucketPlan(tuple(current), size))
            current, start = [], 0
        current.append(TensorMeta(meta.name, meta.dtype, tuple(meta.shape), start))
        size = start + meta.nbytes
    if current:
        plans.append(BucketPlan(tuple(current), size))
    return plans


def param_metas(module: torch.nn.Module, dtype: torch.dtype | None = None) -> list[TensorMeta]:
    """(name, wire dtype, full shape) of every parameter, in `named_parameters` order.

    ZeRO-3 partitions report their full shape in `ds_shape`; tied weights appear once.
    """
    out = []
    for name, p in module.named_parameters():
        wire = dtype or p.dtype
        out.append(TensorMeta(name, str(wire).removeprefix("torch."), tuple(getattr(p, "ds_shape", p.shape))))
    return out


def plan_to_wire(plan: list[BucketPlan]) -> list[dict[str, Any]]:
    """Plain lists and numbers (msgpack- and pickle-safe) for crossing into vLLM's processes."""
    return [bucket_to_wire(b) for b in plan]


def bucket_to_wire(bucket: BucketPlan) -> dict[str, Any]:
    return {"nbytes": bucket.nbytes, "tensors": [[t.name, t.dtype, list(t.shape), t.offset] for t in bucket.tensors]}


def plan_from_wire(wire: list[dict[str, Any]]) -> list[BucketPlan]:
    return [bucket_from_wire(b) for b in wire]


def bucket_from_wire(wire: dict[str, Any]) -> BucketPlan:
    metas = tuple(TensorMeta(n, d, tuple(int(s) for s in shape), int(off)) for n, d, shape, off in wire["tensors"])
    return BucketPlan(metas, int(wire["nbytes"]))


# -- packing (pure torch: CPU or GPU) ------------------------------------------------------------
def _view(flat: torch.Tensor, meta: TensorMeta) -> torch.Tensor:
    return flat[meta.offset:meta.offset + meta.nbytes].view(getattr(torch, meta.dtype)).view(meta.shape)


def pack_bucket(tensors: list[torch.Tensor], bucket: BucketPlan, device: torch.device | str) -> torch.Tensor:
    """One flat uint8 buffer holding `tensors` at the plan's offsets, converted to the wire dtype."""
    if len(tensors) != len(bucket.tensors):
        raise ValueError(f"pack_bucket: {len(tensors)} tensors for a bucket planned with {len(bucket.tensors)}")
    flat = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
    for meta, t in zip(bucket.tensors, tensors):
        if tuple(t.shape) != meta.shape:
            raise ValueError(f"pack_bucket: {meta.name} has shape {tuple(t.shape)}, the plan says {meta.shape}")
        _view(flat, meta).copy_(t.detach())
    return flat


def unpack_bucket(flat: torch.Tensor, bucket: BucketPlan) -> list[tuple[str, torch.Tensor]]:
    """(name, view into `flat`) pairs: no copies; the loader copies them into the model's parameters."""
    if flat.numel() != bucket.nbytes:
        raise ValueError(f"unpack_bucket: buffer of {flat.numel()} bytes for a bucket of {bucket.nbytes}")
    return [(m.name, _view(flat, m)) for m in bucket.tensors]


def _gathered(params: list[torch.nn.Parameter], zero_stage: int):
    if zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def _per_bucket(module: torch.nn.Module, plan: list[BucketPlan], zero_stage: int,
                take: Callable[[BucketPlan, list[torch.nn.Parameter]], T]) -> Iterator[T]:
    """Collective under ZeRO-3: `take(bucket, its gathered parameters)` per bucket, released before the yield."""
    params = dict(module.named_parameters())
    for bucket in plan:
        chunk = [params[m.name] for m in bucket.tensors]
        with _gathered(chunk, zero_stage):
            out = take(bucket, chunk)
        yield out


def iter_packed_buckets(module: torch.nn.Module, plan: list[BucketPlan], *, zero_stage: int,
                        device: torch.device | str, keep: bool = True) -> Iterator[torch.Tensor | None]:
    """GPU transports: one packed buffer per planned bucket; `keep=False` joins the gathers, packs nothing (None)."""
    return _per_bucket(module, plan, zero_stage,
                       lambda bucket, chunk: pack_bucket([p.data for p in chunk], bucket, device) if keep else None)


def gather_buckets(module: torch.nn.Module, *, zero_stage: int, bucket_bytes: int = 256 << 20,
                   keep: bool = True, dtype: torch.dtype | None = None) -> Iterator[Bucket]:
    """Object store and `full_state_dict`: (name, full CPU tensor in the wire dtype) per bucket of the
    `param_metas` plan, at half the GPU transports' bucket size (each bucket is a CPU copy on rank 0, in
    Ray's object store and on every rollout worker). `keep=False` (ranks other than 0) still joins the
    gathers but copies nothing (yields []). Tied weights appear once, under their first name.
    """
    return _per_bucket(module, plan_buckets(param_metas(module, dtype), bucket_bytes), zero_stage,
                       lambda bucket, chunk: [(m.name, p.detach().to("cpu", getattr(torch, m.dtype), copy=True))
                                              for m, p in zip(bucket.tensors, chunk)] if keep else [])


def full_state_dict(module: torch.nn.Module, *, zero_stage: int, keep: bool = True) -> dict[str, torch.Tensor]:
    """The whole model as one CPU state dict (for `final/` and checkpoints' HF export)."""
    out: dict[str, torch.Tensor] = {}
    for bucket in gather_buckets(module, zero_stage=zero_stage, keep=keep):
        out.update(bucket)
    return out


@dataclass(frozen=True)
class PublishedWeights:
    """A trainer rank's `publish_weights` result, for the rollout workers' `update_weights` (rank 0's)."""
    transport: str
    """The transport that carried this sync (`choose_transport`'s answer)."""
    buckets: tuple[Any, ...] = ()
    """Rank 0's Ray object refs to the buckets, in plan order; empty on other ranks and when a GPU transport
    has already loaded the weights into the rollout workers."""


# -- deadlines ----------------------------------------------------------------------------------
class WeightSyncTimeout(TimeoutError):
    """A weight sync passed its deadline (rollout.sync_timeout_s)."""


class Deadline:
    """A wall-clock budget for one sync; `check()` raises a `WeightSyncTimeout` that says what to do."""

    def __init__(self, timeout_s: float, what: str, clock: Callable[[], float] = time.monotonic):
        self.timeout_s, self.what, self.clock = timeout_s, what, clock
        self.end = clock() + timeout_s

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock())

    def check(self) -> None:
        if self.remaining() <= 0.0:
            raise self.error()

    def error(self) -> WeightSyncTimeout:
        return WeightSyncTimeout(
            f"weight sync: {self.what} did not finish within {self.timeout_s:g} s (rollout.sync_timeout_s). "
            f"A trainer or rollout process probably died or hangs: look for the first error in the Ray logs "
            f"(`ray logs`, or the dashboard). If the model is just large or the network slow, raise "
            f"rollout.sync_timeout_s; rollout.weight_transport=object_store avoids NCCL and CUDA IPC."
        )


def with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run `fn()` and return its value, or raise `WeightSyncTimeout` once `timeout_s` has passed.

    `fn` runs in a daemon thread because the calls it guards (an RPC into vLLM's engine process,
    a CUDA synchronize behind an NCCL kernel) cannot be interrupted; on timeout the thread is left
    behind and the run is expected to stop on the error.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=run, name=f"deadline: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise Deadline(timeout_s, what).error()
    if "error" in box:
        raise box["error"]
    return box["value"]


def wait_until(done: Callable[[], bool], deadline: Deadline, poll_s: float = 1e-3) -> None:
    """Poll `done()` (e.g. a CUDA event's `query`) with back-off until it is true or the deadline passes."""
    while not done():
        deadline.check()
        time.sleep(poll_s)
        poll_s = min(poll_s * 2, 0.05)


# -- transport choice (pure) ----------------------------------------------------------------------
TRANSPORTS = ("auto", "object_store", "nccl", "ipc")


def choose_transport(requested: str, *, engine: str, placement: str, on_gpu: bool) -> str:
    """The transport a run uses: `auto` picks NCCL (split) or CUDA IPC (colocated) for vLLM on GPUs,
    else the object store; an explicit choice that cannot work is an error naming the fix."""
    if requested not in TRANSPORTS:
        raise ValueError(f"rollout.weight_transport={requested!r}: use one of {', '.join(TRANSPORTS)}")
    gpu_transport = "ipc" if placement == "colocated" else "nccl"
    if requested == "auto":
        return gpu_transport if (on_gpu and engine == "vllm") else "object_store"
    if requested == "object_store":
        return requested
    if not on_gpu or engine != "vllm":
        raise ValueError(f"rollout.weight_transport={requested}: needs rollout.engine=vllm with trainer and rollout "
                         f"on GPUs; use object_store (or auto) here")
    if requested != gpu_transport:
        raise ValueError(f"rollout.weight_transport={requested} does not fit rollout.placement={placement}: "
                         f"split placement uses nccl (disjoint GPUs), colocated uses ipc (shared GPUs); "
                         f"use {gpu_transport}, auto or object_store")
    return requested


# -- NCCL and CUDA IPC (GPU only; vLLM's communicator) --------------------------------------------
def nccl_group(host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float):
    """Join the trainer↔vLLM NCCL group (rank 0 = trainer rank 0, which hosts the TCP store).

    vLLM's StatelessProcessGroup + PyNcclCommunicator (vllm/distributed/utils.py,
    vllm/distributed/device_communicators/pynccl.py at v0.26.0) form a group beside, not inside,
    torch.distributed's default group, which the trainer's DeepSpeed and vLLM's TP group each own.
    """
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    def join():  # the TCP store and ncclCommInitRank both wait for every member: neither may wait forever
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size,
                                             store_timeout=int(timeout_s))
        return PyNcclCommunicator(group, device=device)

    comm = with_deadline(join, timeout_s, f"joining the trainer↔vLLM NCCL group as rank {rank} of {world_size} "
                                          f"(rendezvous {host}:{port})")
    if comm.disabled:  # it silently disables itself when libnccl cannot be loaded
        raise RuntimeError("weight sync: vLLM's PyNcclCommunicator could not load NCCL in this process; fix the "
                           "NCCL install or use rollout.weight_transport=object_store")
    return comm


def broadcast_bucket(comm, flat: torch.Tensor, deadline: Deadline) -> None:
    """Send (rank 0) or receive (other ranks) one packed bucket, waiting for it under the deadline."""
    stream = torch.cuda.current_stream(flat.device)
    comm.broadcast(flat, src=0, stream=stream)
    done = torch.cuda.Event()
    done.record(stream)
    wait_until(done.query, deadline)  # polling: a dead peer must end in an error, not a hung synchronize


def gpu_uuid(device: torch.device) -> str:
    """Physical GPU identity; CUDA device indices differ between processes with different visible devices."""
    return str(torch.cuda.get_device_properties(device).uuid)


def ipc_handle(flat: torch.Tensor) -> dict[str, bytes]:
    """{this GPU's UUID: pickled CUDA IPC handle of `flat`}; the sender keeps `flat` alive until loaded."""
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(flat)
    # pickled here so it crosses Ray and vLLM's msgpack RPC as plain bytes
    return {gpu_uuid(flat.device): pickle.dumps(args)}


def open_ipc(handles: dict[str, bytes], device: torch.device) -> torch.Tensor:
    """The sender's buffer on `device`, from the handle of the trainer rank that shares this GPU."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    uuid = gpu_uuid(device)
    if uuid not in handles:
        raise RuntimeError(f"weight sync (ipc): no trainer rank shares GPU {uuid} with this vLLM worker. Colocated "
                           f"placement puts one trainer rank on every rollout GPU (launch/placement.py); for any "
                           f"other layout use rollout.weight_transport=object_store")
    args = list(pickle.loads(handles[uuid]))
    args[6] = device.index  # reduce_tensor's device slot: the index as this process numbers the GPU
    return rebuild_cuda_tensor(*args)


# -- trainer side of the GPU transports ---------------------------------------------------------
class Receivers(Protocol):
    """The rollout workers as trainer rank 0 sees them (rl/trainer.py implements it with Ray calls)."""

    def start_broadcast(self, plan_wire: list[dict[str, Any]]) -> None:
        """Ask every rollout worker to receive one broadcast per bucket of the plan; returns at once."""

    def wait(self, timeout_s: float) -> None:
        """Wait for the started receives; raise their error, or WeightSyncTimeout."""

    def load_ipc_bucket(self, bucket_wire: dict[str, Any], handles: dict[str, bytes], timeout_s: float) -> None:
        """Have every rollout worker load one bucket from the trainer ranks' IPC handles; blocks."""


class WeightPublisher:
    """Trainer side of the `nccl` and `ipc` transports; every trainer rank builds one and calls `publish`."""

    def __init__(self, module: torch.nn.Module, transport: str, *, zero_stage: int, rank: int,
                 device: torch.device, dtype: torch.dtype | None, timeout_s: float,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        if transport not in ("nccl", "ipc"):
            raise ValueError(f"WeightPublisher handles nccl and ipc, not {transport!r}")
        self.module, self.transport, self.zero_stage, self.rank = module, transport, zero_stage, rank
        self.device, self.timeout_s = device, timeout_s
        self.plan = plan_buckets(param_metas(module, dtype), bucket_bytes)
        self.broadcast: Callable[[torch.Tensor, Deadline], None] | None = None

    def connect_nccl(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 only, while every vLLM worker joins (`init_weight_group`); blocks until all have."""
        comm = nccl_group(host, port, 0, world_size, self.device, self.timeout_s)
        self.broadcast = lambda flat, deadline: broadcast_bucket(comm, flat, deadline)

    def publish(self, receivers: Receivers | None) -> None:
        """Collective over trainer ranks; `receivers` is given on rank 0 (None elsewhere)."""
        if self.transport == "nccl":
            self._publish_nccl(receivers)
        else:
            self._publish_ipc(receivers)

    def _publish_nccl(self, receivers: Receivers | None) -> None:
        deadline = Deadline(self.timeout_s, "the NCCL weight broadcast")
        sender = self.rank == 0
        if sender:
            if self.broadcast is None or receivers is None:
                raise RuntimeError("weight sync (nccl): rank 0 is not connected; call connect_nccl first")
            receivers.start_broadcast(plan_to_wire(self.plan))
        try:
            for flat in iter_packed_buckets(self.module, self.plan, zero_stage=self.zero_stage,
                                            device=self.device, keep=sender):
                if sender:
                    self.broadcast(flat, deadline)
        except WeightSyncTimeout as timeout:
            if sender:  # a receiver that failed explains the hang better than the timeout does
                try:
                    receivers.wait(1.0)
                except WeightSyncTimeout:
                    pass
            raise timeout
        if sender:
            receivers.wait(deadline.remaining())

    def _publish_ipc(self, receivers: Receivers | None) -> None:
        import torch.distributed as dist

        deadline = Deadline(self.timeout_s, "the CUDA IPC weight load")
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        for bucket, flat in zip(self.plan, iter_packed_buckets(self.module, self.plan, zero_stage=self.zero_stage,
                                                              device=self.device, keep=True)):
            handles = ipc_handle(flat)
            if distributed:  # every rank's copy: each vLLM worker opens the one on its own GPU
                parts: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(parts, handles)
                handles = {k: v for part in parts for k, v in part.items()}
            if self.rank == 0:
                receivers.load_ipc_bucket(bucket_to_wire(bucket), handles, deadline.remaining())
            if distributed:
                dist.barrier()  # keep every rank's buffer alive until the receivers have copied it
            del flat
        torch.cuda.ipc_collect()
