"""A trainer rank reads DeepSpeed's checkpoint files without running code from them (rl/trainer.py,
`_WeightsOnlyLoads`): for ZeRO 0, 2 and 3 a saved state (weights, and the position of a linear LR schedule)
loads back exactly through the weights_only loads and their allow-list, and a planted pickle in place of any
of the checkpoint's DeepSpeed files (model states, ZeRO optimizer partition) is refused, naming the file,
without its payload ever running."""

from __future__ import annotations

import re

import pytest
import ray
import torch

from launch import checkpoint
from rl.safe_load import UnsafeCheckpointError
from tests.integration.test_trainer_paths import _samples, _trainers
from tests.unit.test_checkpoint import Planted

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_deepspeed_state_loads_weights_only_and_a_planted_file_never_runs(ray_cluster, tiny_model_dir, tmp_path,
                                                                          stage):
    trainer = _trainers(tiny_model_dir, f"trainer.zero_stage={stage}", "trainer.lr_scheduler=linear")[0]
    samples = _samples()
    probe = ([s.prompt_ids for s in samples[:3]], [s.response_ids for s in samples[:3]])
    ray.get(trainer.train_step.remote(samples, 1, 1))
    path = checkpoint.save(tmp_path, 1, {"step": 1}, lambda d, tag: ray.get(trainer.save_checkpoint.remote(d, tag)),
                           keep_last=1)
    saved = ray.get(trainer.probe_logprobs.remote(*probe))
    after = ray.get(trainer.train_step.remote(samples, 1, 1)).lr
    trained = ray.get(trainer.probe_logprobs.remote(*probe))

    def load() -> None:
        ray.get(trainer.load_checkpoint.remote(str(path / "trainer"), "state"))

    load()
    assert ray.get(trainer.probe_logprobs.remote(*probe)) == saved
    # the update after the load repeats the one after the save: same lr (the schedule resumed one update in), and
    # the same weights after it
    assert ray.get(trainer.train_step.remote(samples, 1, 1)).lr == after
    assert ray.get(trainer.probe_logprobs.remote(*probe)) == trained

    marker = tmp_path / "marker"
    files = sorted((path / "trainer" / "state").glob("*.pt"))
    assert len(files) == (1 if stage == 0 else 2)  # ZeRO 1-3: the optimizer partition is a file of its own
    for file in files:
        real = file.read_bytes()
        torch.save({"module": Planted(marker)}, file)
        with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to load {file}")):
            load()
        file.write_bytes(real)
    assert not marker.exists()
    ray.kill(trainer)
