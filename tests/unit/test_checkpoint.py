"""launch/checkpoint.py: a re-save of an existing step killed (SIGKILL, a real process) between moving the old
copy aside and renaming the new one in still leaves a complete checkpoint, which `latest()` picks. Loading runs
no code from the checkpoint: a planted pickle, an unknown type tag and the legacy pickled driver state are
refused (naming the file) and the planted payload never runs; a realistic driver state comes back exactly."""

from __future__ import annotations

import datetime
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from launch import checkpoint
from rl.replay import ReplayBuffer, rng_state, set_rng_state
from rl.safe_load import UnsafeCheckpointError
from rl.sampling import DynamicSampler
from rl.types import Sample
from rollout.data import PromptIterator

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from launch import checkpoint

    out, kill = Path(sys.argv[1]), sys.argv[2] == "kill"

    def save_trainer(directory, tag):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "weights.bin").write_bytes(b"x" * 1000)

    real_replace = os.replace
    def replace(src, dst):
        if kill and Path(src).name.startswith(".tmp-"):  # the new copy is about to take the old one's place
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    os.replace = replace
    checkpoint.save(out, 2, {"version": sys.argv[3]}, save_trainer, keep_last=1)
''')


def _save(out: Path, mode: str, version: str) -> int:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), mode, version], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=120).returncode


def test_resave_killed_between_renames_keeps_a_complete_copy(tmp_path):
    assert _save(tmp_path, "ok", "first") == 0
    assert _save(tmp_path, "kill", "second") == -signal.SIGKILL
    path = checkpoint.latest(tmp_path)
    assert path == tmp_path / "checkpoints" / "step_2"
    assert checkpoint.load_driver_state(path) == {"version": "first"}  # the old, complete copy
    assert (path / "trainer" / "weights.bin").stat().st_size == 1000

    assert _save(tmp_path, "ok", "third") == 0  # a later save of the same step replaces it cleanly
    assert checkpoint.load_driver_state(checkpoint.latest(tmp_path)) == {"version": "third"}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]


def test_keep_last_and_leftovers_of_a_killed_save(tmp_path):
    def save_trainer(directory: str, tag: str) -> None:
        Path(directory).mkdir(parents=True)
        torch.save({"w": torch.ones(2)}, Path(directory) / "w.pt")

    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, {"step": step}, save_trainer, keep_last=2)
    (tmp_path / "checkpoints" / ".tmp-step_4").mkdir()  # a save killed before its marker
    assert checkpoint.latest(tmp_path).name == "step_3"
    checkpoint.save(tmp_path, 4, {"step": 4}, save_trainer, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4"]


HF_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from launch import checkpoint

    out, step, kill = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "kill"

    def save_trainer(directory, tag):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "weights.bin").write_bytes(b"x" * 1000)

    def save_hf(directory):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "config.json").write_text("{}")
        if kill:  # half-way through the export: config.json written, the weights not yet
            os.kill(os.getpid(), signal.SIGKILL)
        (Path(directory) / "model.safetensors").write_bytes(b"w" * 100)

    checkpoint.save(out, step, {"step": step}, save_trainer, keep_last=2, save_hf=save_hf)
''')


def test_hf_export_is_inside_the_atomic_save(tmp_path):
    def save(step: int, mode: str) -> int:
        return subprocess.run([sys.executable, "-c", HF_SCRIPT, str(tmp_path), str(step), mode], cwd=ROOT,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, timeout=120).returncode

    assert save(1, "ok") == 0
    assert save(2, "kill") == -signal.SIGKILL  # killed while writing step 2's hf/
    path = checkpoint.latest(tmp_path)
    assert path.name == "step_1"  # the half-written export never makes step 2 look complete
    assert (path / checkpoint.HF_EXPORT / "model.safetensors").stat().st_size == 100
    assert save(2, "ok") == 0
    path = checkpoint.latest(tmp_path)
    assert path.name == "step_2" and (path / "hf" / "config.json").is_file() and (path / "trainer").is_dir()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1", "step_2"]  # leftover gone


def _no_trainer(directory: str, tag: str) -> None:
    Path(directory).mkdir(parents=True)


class Planted:
    """A pickle whose loading runs a shell command: it would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _sample(pid: int, adv: float, **kw) -> Sample:
    return Sample(prompt_id=pid, group_id=pid // 2, prompt_ids=[1, 2, pid], response_ids=[3, 4],
                  rollout_logprobs=[-0.25, -1 / 3], finish_reason="stop", policy_version=pid % 3, reward=1.0 - adv,
                  advantage=adv, **kw)


def _driver_state() -> dict:
    """What Driver.driver_state() returns mid-run with dynamic sampling (carry_surplus) and replay on."""
    rng, gen = random.Random(7), torch.Generator().manual_seed(3)
    rng.random(), torch.rand(5, generator=gen)
    iterator = PromptIterator(10, seed=1)
    iterator.next_ids(13)
    sampler = DynamicSampler(lambda s: s.reward, max_rounds=4, carry_surplus=True)
    sampler.add([[_sample(0, 0.5), _sample(1, -0.5)], [_sample(2, 0.5, fields={"answer": "2", "tags": (1, "a")}),
                                                        _sample(3, -0.5, reward_metrics={"acc": 1.0})]])
    sampler.take(1)  # one group carried
    replay = ReplayBuffer(capacity=4, alpha=1.0)
    replay.add([_sample(4, 0.75, stratum="s"), _sample(5, -0.25, replayed=True, is_weight=0.5)], step=2)
    replay.sample(2, gen, current_version=3)
    return {"step": 2, "version": 2, "next_group_id": 17, "generated_tokens": 2**40, "iterator": iterator.state_dict(),
            "rng": rng.getstate(), "sampler": sampler.state_dict(), "replay": replay.state_dict(),
            "replay_rng": rng_state(gen),
            "kl_probe": {"prompts": [[1, 2]], "responses": [[3, 4, 5]], "logprobs": [[-0.5, -1.25, -2.0]]}}


def _same(a, b) -> bool:
    """Equal values of exactly the same types, all the way down (tuples stay tuples, tensors bitwise)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_driver_state_round_trip_is_exact(tmp_path):
    state = _driver_state()
    state["sampler"]["kept"][0][0].fields["__rlvr_type__"] = "Sample"  # a dataset column named like the tag
    path = checkpoint.save(tmp_path, 2, state, _no_trainer, keep_last=1)
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", checkpoint.DRIVER_STATE, "trainer"]
    loaded = checkpoint.load_driver_state(path)
    assert _same(loaded, state)
    assert isinstance(loaded["replay"]["entries"][0][0], Sample) and type(loaded["rng"][1]) is tuple

    # what a resume does with it: the same draws as the uninterrupted objects
    rng, gen = random.Random(), torch.Generator()
    rng.setstate(loaded["rng"])
    set_rng_state(gen, loaded["replay_rng"])
    original = random.Random()
    original.setstate(state["rng"])
    assert rng.random() == original.random()
    replay = ReplayBuffer(capacity=4, alpha=1.0)
    replay.load_state_dict(loaded["replay"])
    expected = ReplayBuffer(capacity=4, alpha=1.0)
    expected.load_state_dict(state["replay"])
    assert _same(replay.sample(3, gen, current_version=3), expected.sample(3, torch.Generator().set_state(
        state["replay_rng"]), current_version=3))


def test_state_that_cannot_be_saved_without_pickle_is_refused_at_save():
    with pytest.raises(TypeError, match=r"state\['sampler'\]\['kept'\]\[0\]\.fields\['when'\] is a .*date"):
        checkpoint.encode_state({"sampler": {"kept": [_sample(0, 1.0, fields={"when": datetime.date(2025, 1, 1)})]}})


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch on the raw pickle.dump file
@pytest.mark.parametrize("write", ["torch.save", "pickle.dump"])
def test_planted_pickle_as_driver_state_is_refused_and_never_runs(tmp_path, write):
    control = tmp_path / "control"
    torch.save(Planted(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is live: an unpickling load runs it
    assert control.exists()

    path = checkpoint.save(tmp_path, 1, {"step": 1}, _no_trainer, keep_last=1)
    marker, file = tmp_path / "marker", path / checkpoint.DRIVER_STATE
    payload = {"step": 1, "rng": Planted(marker)}
    if write == "torch.save":
        torch.save(payload, file)
    else:
        file.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {file}")):
        checkpoint.load_driver_state(path)
    assert not marker.exists()


def test_unknown_type_tag_is_refused(tmp_path):
    path = checkpoint.save(tmp_path, 1, {"step": 1}, _no_trainer, keep_last=1)
    torch.save({"replay": [{"__rlvr_type__": "os.system", "fields": {"command": "true"}}]},
               path / checkpoint.DRIVER_STATE)
    with pytest.raises(ValueError, match=r"driver_state.v2.pt: state\['replay'\]\[0\] has the type tag 'os.system'"):
        checkpoint.load_driver_state(path)


def test_legacy_pickled_driver_state_is_refused_until_upgraded(tmp_path):
    state = _driver_state()
    path = checkpoint.save(tmp_path, 2, {}, _no_trainer, keep_last=1)
    (path / checkpoint.DRIVER_STATE).unlink()  # what the old code wrote instead
    legacy = path / checkpoint.LEGACY_DRIVER_STATE
    marker = tmp_path / "marker"
    torch.save({**state, "planted": Planted(marker)}, legacy)
    with pytest.raises(ValueError, match=f"{legacy}: a driver state written by an older rlvr version .* "
                                         f"`python -m launch.checkpoint upgrade {path}`"):
        checkpoint.load_driver_state(path)
    assert not marker.exists()

    torch.save(state, legacy)  # the user's own old checkpoint, converted by an explicit command
    done = subprocess.run([sys.executable, "-m", "launch.checkpoint", "upgrade", str(path)], cwd=ROOT, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _same(checkpoint.load_driver_state(path), state)
