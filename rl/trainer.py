"""The policy trainer: W DeepSpeed data-parallel ranks, each a Ray actor (`TrainerWorker`).

The driver creates the ranks (launch/cluster.py), hands every rank the same object-store reference
to a step's samples, and each rank takes its shard of every mini-batch (`samples[m][rank::W]`).
Per mini-batch a rank packs its shard into token-budget micro-batches; the ranks agree (all-reduce)
on the mini-batch's total token and sequence counts *before* any backward, and on the number of
micro-batches, so that
- the loss is the exact global token-mean over the whole mini-batch (DAPO arXiv 2503.14476 eq. 12; see
  docs/algorithms.md, "Exact global normalisation"),
- every rank runs the same number of ZeRO collectives (shorter ranks run zero-loss passes).
DeepSpeed runs with caller-managed accumulation: backward() accumulates, step() is the boundary.
DeepSpeed averages gradients over ranks; each rank's loss share is multiplied by W to undo that.

Checkpoints: DeepSpeed writes them as it always does; they are read back with torch's weights_only unpickler
(rl/safe_load.py) and an allow-list of the three DeepSpeed classes its files hold (`_deepspeed_checkpoint_classes`),
so a planted file cannot run code on a resume.

This is the only module in rl/ that imports Ray.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from datetime import timedelta
from dataclasses import replace
from typing import TYPE_CHECKING

import ray
import torch
import torch.distributed as dist

from rl.batch import MicroBatch, collate, collate_shared, split_by_token_budget, split_shared
from rl.cpu import use_cpus
from rl.faults import Guard, GuardSpec, guarded
from rl import precision
from rl.loss_config import LossConfig
from rl.memory import process_memory_mb
from rl.lr_schedule import make_lr_scheduler
from rl.policy import PARITY_KEYS, PolicyModule, check_shared_prompts, parity_sums
from rl.safe_load import load_weights_only
from rl.types import Sample, TrainResult
from rl.weight_sync import Deadline, PublishedWeights, WeightPublisher, full_state_dict, gather_buckets

if TYPE_CHECKING:  # the launch schema's sections, sent to every rank as they are (frozen dataclasses)
    from launch.config import ModelConfig, TrainerConfig

log = logging.getLogger(__name__)


TIMED_PHASES = ("old_logprobs", "ref_logprobs", "forward", "backward", "optimizer")
"""The phases of `train_step` whose seconds each rank reports (TrainResult.timing; perf/<phase>_s)."""


class TrainerWorker:
    def __init__(self, rank: int, world_size: int, *, model_path: str, trainer: TrainerConfig, model: ModelConfig,
                 loss: LossConfig, temperature: float, need_ref: bool, threads: int, seed: int,
                 cores: list[int] | None = None, collective_timeout_s: float = 3600.0,
                 guard: GuardSpec | None = None):
        use_cpus(threads, cores)
        self.rank, self.world_size = rank, world_size
        self.guard = Guard(guard)
        self.collective_timeout_s = collective_timeout_s
        self.publisher: WeightPublisher | None = None  # a GPU weight transport, once connect_rollout ran
        self.receivers: _RayReceivers | None = None
        self._init_args = dict(model_path=model_path, trainer_cfg=trainer, model_cfg=model,
                               loss=loss, temperature=temperature, need_ref=need_ref, seed=seed)

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and a free port: rank 0 hosts the torch.distributed rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    @guarded
    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the DeepSpeed engine (all ranks call this together)."""
        self._setup(master_addr, master_port, **self._init_args)
        return self.rank

    def _setup(self, master_addr: str, master_port: int, *, model_path: str, trainer_cfg: TrainerConfig,
               model_cfg: ModelConfig, loss: LossConfig, temperature: float, need_ref: bool, seed: int) -> None:
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if master_addr.startswith("127."):  # loopback cluster: keep gloo's pair sockets on loopback too
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            self._rendezvous_server = _loopback_store_server(master_addr, master_port) if self.rank == 0 else None
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _skip_shm_comm_build()

        self.cfg = trainer_cfg
        self.loss, self.temperature = loss, temperature
        self.zero_stage = trainer_cfg.zero_stage
        use_cuda = torch.cuda.is_available() and trainer_cfg.gpus_per_worker > 0
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False,
                                   timeout=timedelta(seconds=self.collective_timeout_s))  # faults.trainer_timeout_s
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        torch.manual_seed(seed)
        self.precision = precision.resolve(model_cfg.dtype, self.device.type)
        # GPU bf16: DeepSpeed's bf16 mode; CPU bf16: fp32 weights, the body under autocast (rl/precision.py)
        dtype = torch.bfloat16 if use_cuda and self.precision.compute == torch.bfloat16 else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                     trust_remote_code=model_cfg.trust_remote_code)
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.policy = PolicyModule(model, self.precision)
        self.share_prompts = self._share_prompts(trainer_cfg.share_prompts)
        # fused: one pass over each parameter's memory per step instead of the ~10 of the per-tensor loop
        # (on a 2-core CPU 1.4-2.3 s -> 0.45 s per DeepSpeed step of a 135M model; benchmarks/cpu_levers.py)
        optimizer = torch.optim.AdamW(self.policy.parameters(), lr=trainer_cfg.lr,
                                      weight_decay=trainer_cfg.weight_decay, betas=(0.9, 0.999), fused=True)
        # planned for the nominal update count (rl/lr_schedule.py); DeepSpeed steps it and checkpoints its state
        scheduler = make_lr_scheduler(optimizer, trainer_cfg.lr_scheduler, trainer_cfg.warmup_steps,
                                      trainer_cfg.total_steps * trainer_cfg.mini_batches * trainer_cfg.epochs)
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "gradient_clipping": trainer_cfg.grad_clip,
            "zero_optimization": {"stage": self.zero_stage, "overlap_comm": False},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": dtype == torch.bfloat16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=self.policy, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        self.engine.checkpoint_engine = _WeightsOnlyLoads(self.engine.checkpoint_engine)
        self.ref = None
        if need_ref:  # frozen reference policy for the KL term (never wrapped by DeepSpeed)
            self.ref = PolicyModule(AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype),
                                    self.precision).to(self.device).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)

    def _share_prompts(self, requested: bool | None) -> bool:
        """Whether micro-batches use shared-prompt rows (trainer.share_prompts; rl.policy.check_shared_prompts)."""
        if requested is False or (requested is None and self.device.type == "cuda"):
            return False
        problem = check_shared_prompts(self.policy)
        if problem is None:
            return True
        if requested:
            raise ValueError(f"trainer.share_prompts=true: {problem}; set trainer.share_prompts=false (or null)")
        if self.rank == 0:
            log.warning("trainer.share_prompts: off, %s", problem)
        return False

    # -- training -----------------------------------------------------------------------------
    @contextmanager
    def _timed(self, phase: str):
        """Add the block's wall time to this step's `phase` seconds (TrainResult.timing). On a GPU the clock
        is read after a synchronize, so each phase is charged its own kernels."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self._timing[phase] += time.perf_counter() - t0

    @guarded
    def train_step(self, samples: list[Sample], num_mini_batches: int, epochs: int) -> TrainResult:
        """One step's updates. Returns per-micro-batch metric records (for the driver to aggregate), the lr,
        grad norms, the number of this rank's samples skipped for a zero advantage, and `parity`: sums of
        the trainer-vs-engine logprob gap over this rank's trained tokens (rl.policy.parity_sums)."""
        counted = [s.advantage is not None and s.reward_status == "ok" and s.num_trained_tokens > 0 for s in samples]
        # A sample with advantage 0 adds exactly 0 to the loss and its gradient when no KL or entropy term is
        # on (its per-token term is -0·ratio whatever the ratio, clip or TIS weight). Its tokens still count in
        # the global token/sequence totals, so the normalisation is unchanged; it just skips forward/backward.
        # All-correct/all-wrong GRPO groups make this a large saving early in training.
        skip_zero = self.loss.zero_advantage_is_zero
        trained = [c and not (skip_zero and s.advantage == 0) for c, s in zip(counted, samples)]
        minis = [m for m in split_even(list(range(len(samples))), num_mini_batches) if m]  # no empty update
        shards = [mini[self.rank::self.world_size] for mini in minis]
        parity = dict.fromkeys(PARITY_KEYS, 0.0)
        self._timing = dict.fromkeys(TIMED_PHASES, 0.0)
        old = None
        if num_mini_batches * epochs > 1:  # proximal logprobs, before the first update
            with self._timed("old_logprobs"):
                old = self._per_sample_logprobs(samples, shards, trained, parity=parity)[0]
        records: list[dict[str, float]] = []
        grad_norms: list[float] = []
        self.engine.train()
        for _ in range(epochs):
            for shard in shards:
                recs, norm = self._update(samples, shard, trained, counted, old)
                records += recs
                grad_norms += [norm] if norm is not None else []
        for rec in records:  # single update: the loss pass itself measured the gap (its old = current)
            _add_parity(parity, {k: rec.pop(k) for k in PARITY_KEYS if k in rec})
        mine = [i for shard in shards for i in shard]
        # No malloc_trim here (unlike the rollout worker): the next step reuses these freed activation pages, and
        # handing them back made it fault them in again, +1.2 s per quickstart step; RSS plateaus at the largest
        # step's working set instead (rl/memory.py)
        return TrainResult(records=records, updates=len(shards) * epochs, lr=self.engine.get_lr()[0],
                           grad_norms=grad_norms,
                           skipped=sum(counted[i] and not trained[i] for i in mine), parity=parity,
                           timing=self._timing, memory=process_memory_mb())

    def _micro_batches(self, samples, shard, loss_mask, old=None, min_count: int = 0) -> list[MicroBatch]:
        shard = [i for i in shard if loss_mask[i]]  # untrained samples never reach the model
        local = [samples[i] for i in shard]
        if self.share_prompts:
            batches = split_shared(local, self.cfg.micro_batch_tokens) if local else []
            mbs = [collate_shared(samples, [[shard[j] for j in row] for row in rows], self.pad_id, loss_mask, old)
                   for rows in batches]
        else:
            groups = split_by_token_budget(local, self.cfg.micro_batch_tokens) if local else []
            mbs = [collate(samples, [shard[j] for j in g], self.pad_id, loss_mask, old) for g in groups]
        # every rank must run the same number of passes (ZeRO collectives); pad with empty ones
        count = torch.tensor([max(len(mbs), min_count)], dtype=torch.long)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        while len(mbs) < int(count):  # a padding pass holds no sample: nothing may be read back from it
            mbs.append(replace(collate([samples[0]], [0], self.pad_id, [False]), sample_ids=[]))
        return mbs

    def _update(self, samples, shard, trained, counted, old) -> tuple[list[dict[str, float]], float | None]:
        # min_count=1: even when every sample is skipped, the optimizer steps on a zero gradient (Adam's
        # moments and weight decay still move), exactly as if the zero-advantage samples had been run
        mbs = self._micro_batches(samples, shard, trained, old, min_count=1)
        local = [i for i in shard if counted[i]]
        counts = torch.tensor([sum(samples[i].num_trained_tokens for i in local), len(local)], dtype=torch.float64)
        dist.all_reduce(counts)  # global token / sequence counts of the mini-batch, before any backward
        n_tok, n_seq = max(float(counts[0]), 1.0), max(float(counts[1]), 1.0)
        records = []
        for mb in mbs:
            mb = _to(mb, self.device)
            with self._timed("ref_logprobs"):
                ref = self._ref_logprobs(mb)
            with self._timed("forward"):
                loss, metrics = self.engine(mb, mode="loss", temperature=self.temperature,
                                            loss_path="fused" if self.cfg.fused_loss else "naive",
                                            loss=self.loss, ref_logprobs=ref,
                                            global_num_tokens=n_tok, global_num_seqs=n_seq)
            with self._timed("backward"):
                self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if mb.num_tokens:
                records.append({k: float(v) for k, v in metrics.items()})
        with self._timed("optimizer"):
            self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()  # the global norm (the same on every rank), pre-clip
        return records, None if grad_norm is None else float(grad_norm)

    @torch.no_grad()
    def _per_sample_logprobs(self, samples, shards, loss_mask, with_ref: bool = False, parity: dict | None = None):
        """{sample index: current-policy logprobs} (and the reference's) for the given shards; adds the
        trainer-vs-engine gap of those tokens to `parity` when given."""
        self.engine.eval()
        cur: dict[int, list[float]] = {}
        ref: dict[int, list[float]] = {}
        for shard in shards:
            for mb in self._micro_batches(samples, shard, loss_mask):
                mb = _to(mb, self.device)
                lp = self.engine(mb, mode="logprobs", temperature=self.temperature).float()
                rp = self._ref_logprobs(mb) if with_ref else None
                if parity is not None and mb.num_tokens:
                    _add_parity(parity, parity_sums(lp, mb.rollout_logprobs, mb.replayed))
                lp, pos = lp.cpu(), 0
                for i in mb.sample_ids:
                    n = samples[i].num_trained_tokens if loss_mask[i] else 0
                    cur[i] = lp[pos:pos + n].tolist()
                    if rp is not None:
                        ref[i] = rp[pos:pos + n].cpu().tolist()
                    pos += n
        return cur, ref

    @guarded
    def sequence_kl(self, samples: list[Sample], estimator: str) -> dict[int, float]:
        """Σ_t KL_t(π_θ ‖ π_ref) per sample of this rank's shard (KL-in-reward, before advantages)."""
        from rl.losses import kl_penalty

        shard = list(range(len(samples)))[self.rank::self.world_size]
        mask = [s.num_trained_tokens > 0 for s in samples]
        cur, ref = self._per_sample_logprobs(samples, [shard], mask, with_ref=True)
        out = {}
        for i in shard:
            if cur.get(i):
                out[i] = float(kl_penalty(torch.tensor(cur[i]), torch.tensor(ref[i]), estimator).sum())
            else:
                out[i] = 0.0
        return out

    @torch.no_grad()
    def _ref_logprobs(self, mb: MicroBatch) -> torch.Tensor | None:
        if self.ref is None or mb.num_tokens == 0:
            return None
        return self.ref(mb, mode="logprobs", temperature=self.temperature).float()

    # -- weights out --------------------------------------------------------------------------
    def connect_rollout(self, rollout: list, transport: str, timeout_s: float) -> None:
        """Collective: set up the `nccl` or `ipc` weight transport to the rollout workers (their actor handles)."""
        # dtype None: the wire carries the parameters' own dtype (bfloat16 under DeepSpeed bf16)
        self.publisher = WeightPublisher(self.policy.model, transport, zero_stage=self.zero_stage, rank=self.rank,
                                         device=self.device, dtype=None, timeout_s=timeout_s)
        if self.rank != 0:
            return
        self.receivers = _RayReceivers(rollout)
        if transport == "nccl":  # group: this rank (0) and every vLLM worker of every rollout engine
            host, port = self.rendezvous_address()
            sizes = _get([w.tensor_parallel_size.remote() for w in rollout], timeout_s, "asking the engines their sizes")
            world = 1 + sum(sizes)
            joins = [w.init_weight_group.remote(host, port, 1 + sum(sizes[:i]), world) for i, w in enumerate(rollout)]
            self.publisher.connect_nccl(host, port, world)
            _get(joins, timeout_s, "joining the trainer↔vLLM NCCL group")

    @guarded
    def publish_weights(self) -> PublishedWeights:
        """Collective: gather full parameters bucket by bucket. The driver hands rank 0's value to the rollout
        workers: refs to the buckets (object store), or none (a GPU transport: rank 0 has loaded them itself)."""
        if self.publisher is not None:
            self.publisher.publish(self.receivers)
            return PublishedWeights(self.publisher.transport)
        keep = self.rank == 0  # the other ranks only join the gathers
        buckets = gather_buckets(self.policy.model, zero_stage=self.zero_stage, keep=keep)
        return PublishedWeights("object_store", tuple(ray.put(b) for b in buckets if keep))  # one bucket at a time

    @torch.no_grad()
    def probe_logprobs(self, prompts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """Trainer-side logprobs of given sequences (the post-sync parity check)."""
        samples = [Sample(0, 0, p, r, [0.0] * len(r), "stop", 0, advantage=0.0) for p, r in zip(prompts, responses)]
        mb = _to(collate(samples, list(range(len(samples))), self.pad_id, [True] * len(samples)), self.device)
        self.engine.eval()
        lp = self.engine(mb, mode="logprobs", temperature=self.temperature).float().cpu().tolist()
        out, pos = [], 0
        for r in responses:
            out.append(lp[pos:pos + len(r)])
            pos += len(r)
        return out

    # -- checkpoints --------------------------------------------------------------------------
    @guarded
    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False)

    @guarded
    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_module_strict=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag} in {directory}")

    @guarded
    def save_hf(self, directory: str) -> None:
        """Collective: write a Hugging Face model directory (safetensors) from rank 0."""
        state = full_state_dict(self.policy.model, zero_stage=self.zero_stage, keep=self.rank == 0)
        if self.rank == 0:
            self.policy.model.save_pretrained(directory, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        dist.barrier()

    def ping(self) -> int:
        return self.rank

    def describe_precision(self) -> str:
        """The compute format this rank resolved `model.dtype` to (rl.precision)."""
        return self.precision.name if self.device.type == "cpu" else f"{self.precision.name} (DeepSpeed)"

    def memory(self) -> dict[str, float]:
        """This rank's resident memory now and at its peak (MiB; rl.memory.process_memory_mb)."""
        return process_memory_mb()


class _WeightsOnlyLoads:
    """DeepSpeed's checkpoint engine with `load` replaced: every file DeepSpeed reads back during
    `engine.load_checkpoint` (model states, ZeRO optimizer partitions) goes through `load_weights_only`, which
    DeepSpeed's own engine (torch.load(weights_only=False)) does not. Saving and everything else is the
    wrapped engine's."""

    def __init__(self, inner):
        self._inner, self._allow = inner, _deepspeed_checkpoint_classes()

    def load(self, path: str, map_location=None):
        return load_weights_only(path, self._allow, map_location)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _deepspeed_checkpoint_classes() -> tuple[type, ...]:
    """The non-torch classes in the checkpoint files of every engine this trainer builds (DeepSpeed 0.19, fp32
    or bf16, ZeRO 0-3), as `torch.serialization.get_unsafe_globals_in_checkpoint` lists them: ZeRO 1-3 optimizer
    states pickle their loss scaler (attributes only) and stage enum, ZeRO 1-2 and bf16 ZeRO 1 the
    (numel, start) addresses of their parameter slices. ZeRO 0 files need none. A DeepSpeed version that pickles
    anything else fails to load with UnsafeCheckpointError naming the class, never runs it."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return LossScaler, ZeroStageEnum, fragment_address


class _RayReceivers:
    """rl.weight_sync.Receivers over Ray: the rollout worker actors, as trainer rank 0 drives them."""

    def __init__(self, workers: list):
        self.workers, self.pending = workers, []

    def start_broadcast(self, plan_wire: list[dict]) -> None:
        self.pending = [w.receive_broadcast.remote(plan_wire) for w in self.workers]

    def wait(self, timeout_s: float) -> None:
        pending, self.pending = self.pending, []
        _get(pending, timeout_s, "receiving the NCCL weight broadcast")

    def load_ipc_bucket(self, bucket_wire: dict, handles: dict[str, bytes], timeout_s: float) -> None:
        _get([w.load_ipc_bucket.remote(bucket_wire, handles) for w in self.workers], timeout_s,
             "loading a weight bucket over CUDA IPC")


def _loopback_store_server(host: str, port: int) -> dist.TCPStore:
    """Rank 0's rendezvous server, listening on `host` (a loopback address) alone.

    env:// rendezvous (deepspeed.init_distributed) starts the TCPStore server on all interfaces and has no
    option to bind one. It starts it multi-tenant, though, and a multi-tenant TCPStore reuses the server of
    the same port already running in its process, so a server started here first on a socket bound to `host`
    is the one the process group uses. Were that reuse ever dropped, rank 0's own server would fail to bind
    the port (address in use) rather than listen on all interfaces.
    """
    sock = socket.socket()
    sock.bind((host, port))
    sock.listen()
    return dist.TCPStore(host, port, is_master=True, wait_for_workers=False, multi_tenant=True,
                         master_listen_fd=sock.detach())  # the store owns the socket from here on


def _skip_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-building its CPU shared-memory all-reduce op (`deepspeed_shm_comm`).

    On the CPU accelerator every init_distributed loads it through torch's JIT build, which holds a lock file
    in the extension's cache directory each time, built or not; a process killed while holding it leaves the
    lock, and every later start waits on it forever.
    The op serves only DeepSpeed's `inference_all_reduce` (tensor-parallel inference); training collectives
    go through torch.distributed (gloo) either way. DeepSpeed skips the op when its probed compatibility
    entry is False; it keeps that probe in one module dict, so the edit holds for this process.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")  # None off the CPU accelerator
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def _get(refs: list, timeout_s: float, what: str) -> list:
    try:
        return ray.get(refs, timeout=max(timeout_s, 1e-3))
    except ray.exceptions.GetTimeoutError:
        raise Deadline(timeout_s, what).error() from None


def split_even(ids: list[int], parts: int) -> list[list[int]]:
    """`parts` contiguous slices whose sizes differ by at most one (10 in 4: 3, 3, 2, 2); empty slices only
    when there are fewer ids than parts."""
    size, extra = divmod(len(ids), parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [ids[bounds[k]:bounds[k + 1]] for k in range(parts)]


def _add_parity(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = max(total[k], v) if k.endswith("_max") else total[k] + v


def _to(mb: MicroBatch, device: torch.device) -> MicroBatch:
    if device.type == "cpu":
        return mb
    fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(mb).items()}
    return MicroBatch(**fields)
