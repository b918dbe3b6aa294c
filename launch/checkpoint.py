"""Checkpoints: `checkpoints/step_N/` = every trainer rank's DeepSpeed state + the driver's state + (with
trainer.checkpoint_hf, the default) `hf/`, a Hugging Face export of the weights that `python -m launch.eval`,
`from_pretrained` and vLLM read.

A checkpoint is written into `checkpoints/.tmp-step_N/`, flushed to disk (fsync), and renamed to `step_N/`
only once every rank and the driver have finished writing, with a `COMPLETE` marker inside; a kill during a
save therefore never leaves a directory that `latest()` would pick. Re-saving an existing step first moves the
old copy aside to `.old-step_N/` (one rename), so a kill between the two renames still leaves a complete copy,
which `latest()` takes back. Only the newest `keep_last` complete checkpoints are kept. On a multi-node cluster `trainer.output_dir` must be shared storage.

Loading a checkpoint runs no code from it (a file planted in output_dir must not get to run on a resume).
The driver's state is saved as plain containers and tensors (`encode_state`: our dataclasses become dicts with
an allow-listed type tag; tuples stay tuples, so `random.setstate` gets its exact structure back) and read with
torch's weights_only unpickler; the trainer ranks read DeepSpeed's files the same way (rl/trainer.py). What a
checkpoint still decides is its values: weights, optimizer state, counters; only resume from a checkpoint
whose contents you would train on. `driver_state.pt`, the pickle of older versions, is refused;
`python -m launch.checkpoint upgrade STEP_DIR` converts one you trust (docs/architecture.md, "Checkpoints").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from rl.safe_load import load_weights_only
from rl.types import Sample

MARKER = "COMPLETE"
HF_EXPORT = "hf"
DRIVER_STATE = "driver_state.v2.pt"
LEGACY_DRIVER_STATE = "driver_state.pt"  # a pickle (torch.save of Sample objects), written before v2
_STEP = re.compile(r"^step_(\d+)$")
_TAG = "__rlvr_type__"
_TYPES: dict[str, type] = {"Sample": Sample}
"""The only classes a driver state may hold besides containers, scalars and tensors; decoding builds no other."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(output_dir: str | Path, step: int, driver_state: dict[str, Any],
         save_trainer: Callable[[str, str], None], keep_last: int,
         save_hf: Callable[[str], None] | None = None) -> Path:
    """save_trainer(directory, tag) must write every rank's state (a collective call); save_hf(directory), when
    given, the Hugging Face export (HF_EXPORT), inside the same atomic save: a kill while it writes leaves no
    complete checkpoint, only the previous one."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_trainer(str(tmp / "trainer"), "state")
    if save_hf is not None:
        save_hf(str(tmp / HF_EXPORT))
    torch.save(encode_state(driver_state), tmp / DRIVER_STATE)
    _fsync_tree(tmp)  # every byte on disk before the marker says so
    (tmp / MARKER).write_text(str(step))
    _fsync(tmp / MARKER)
    _fsync(tmp)
    old = root / f".old-step_{step}"
    if final.exists():  # never delete the only complete copy before its replacement is in place
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(root)
    shutil.rmtree(old, ignore_errors=True)
    _prune(root, keep_last)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for dirpath, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


def latest(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return None
    for old in root.glob(".old-step_*"):  # a re-save killed between its two renames: take the old copy back
        final = root / old.name.removeprefix(".old-")
        if (old / MARKER).is_file() and not final.exists():
            os.replace(old, final)
    done = [(int(m.group(1)), p) for p in root.iterdir()
            if (m := _STEP.match(p.name)) and (p / MARKER).is_file()]
    return max(done)[1] if done else None


def load_driver_state(path: str | Path) -> dict[str, Any]:
    """The driver state `save` was given for complete checkpoint `path`, read without unpickling code
    (UnsafeCheckpointError naming the file otherwise); a legacy pickled one is refused with what to do."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker); "
                                f"use trainer.resume=auto to pick the newest complete one")
    file = path / DRIVER_STATE
    if not file.is_file() and (path / LEGACY_DRIVER_STATE).is_file():
        raise ValueError(
            f"{path / LEGACY_DRIVER_STATE}: a driver state written by an older rlvr version as a pickle, which can "
            f"run arbitrary code when loaded, so it is not loaded. If you wrote this checkpoint yourself, convert it "
            f"once with `python -m launch.checkpoint upgrade {path}` and resume; otherwise start afresh "
            f"(trainer.resume=never)")
    try:
        return decode_state(load_weights_only(file))
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


def deepspeed_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of complete checkpoint `path` from its DeepSpeed state, for a checkpoint saved without
    HF_EXPORT: under ZeRO 0-2 rank 0's model-states file holds the whole module (read with the trainer's
    weights_only loads). ZeRO-3 keeps the weights partitioned, and a file may be missing: ValueError saying
    what to do."""
    from rl.trainer import _deepspeed_checkpoint_classes

    path = Path(path)
    file = path / "trainer" / "state" / "mp_rank_00_model_states.pt"
    fix = (f"evaluate the run's final/, or resume the run with trainer.checkpoint_hf=true so that its next "
           f"checkpoints carry an {HF_EXPORT}/ export")
    if not (path / MARKER).is_file() or not file.is_file():
        raise ValueError(f"{path}: no {HF_EXPORT}/ export and no DeepSpeed model states ({file.relative_to(path)}) "
                         f"to rebuild one from; {fix}")
    module = load_weights_only(file, _deepspeed_checkpoint_classes(), map_location="cpu")["module"]
    state = {k.removeprefix("model."): v for k, v in module.items()}  # the trainer wraps the HF model as `model`
    if any(v.numel() == 0 for v in state.values()):
        raise ValueError(f"{path}: a ZeRO-3 checkpoint without an {HF_EXPORT}/ export keeps its weights partitioned "
                         f"over the ranks' optimizer files; {fix}")
    return state


def write_hf(state: dict[str, torch.Tensor], base_model: str, dest: str | Path, *,
             trust_remote_code: bool = False) -> Path:
    """`state` as a Hugging Face directory `dest` (written beside it, then renamed), with the architecture and
    tokenizer of `base_model` (the run's model.path)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, dtype=next(iter(state.values())).dtype,
                                             trust_remote_code=trust_remote_code)
    model.load_state_dict(state, strict=True)
    tmp = dest.parent / f".tmp-{dest.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def upgrade(path: str | Path) -> Path:
    """Rewrite the legacy pickled driver state of checkpoint `path` as DRIVER_STATE. Unpickles the legacy file,
    so it runs whatever code that file holds: the user's explicit, one-off decision to trust it. The legacy file
    is left in place (loading ignores it once DRIVER_STATE exists)."""
    path = Path(path)
    state = torch.load(path / LEGACY_DRIVER_STATE, weights_only=False)
    tmp = path / f".{DRIVER_STATE}.tmp"
    torch.save(encode_state(state), tmp)
    _fsync(tmp)
    os.replace(tmp, path / DRIVER_STATE)
    _fsync(path)
    return path / DRIVER_STATE


def encode_state(obj: Any, where: str = "state") -> Any:
    """`obj` as containers, scalars, bytes and tensors only (what torch.load(weights_only=True) rebuilds):
    an allow-listed dataclass becomes {_TAG: name, "fields": {...}}, a dict that itself has the key _TAG
    becomes {_TAG: "dict", "items": [...]}. Anything else raises TypeError naming where it is in the state."""
    kind = type(obj)
    if obj is None or kind in (bool, int, float, str, bytes) or kind is torch.Tensor:
        return obj
    if kind in (list, tuple):
        return kind(encode_state(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if kind is dict:
        bad = [k for k in obj if not (k is None or type(k) in (bool, int, float, str))]
        if bad:
            raise TypeError(f"checkpoint: {where} has a key {bad[0]!r} of type {type(bad[0]).__name__}; "
                            "driver-state dict keys must be str, int, float, bool or None")
        out = {k: encode_state(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return {_TAG: "dict", "items": list(out.items())} if _TAG in obj else out
    if _TYPES.get(kind.__name__) is kind:
        return {_TAG: kind.__name__, "fields": {f.name: encode_state(getattr(obj, f.name), f"{where}.{f.name}")
                                                for f in dataclasses.fields(obj)}}
    raise TypeError(f"checkpoint: {where} is a {kind.__module__}.{kind.__qualname__}; a driver state may hold only "
                    f"None, bool, int, float, str, bytes, tensors, lists, tuples, dicts and {sorted(_TYPES)}")


def decode_state(obj: Any, where: str = "state") -> Any:
    """The inverse of `encode_state`; an unknown type tag raises ValueError naming the tag and where it is."""
    kind = type(obj)
    if kind in (list, tuple):
        return kind(decode_state(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if kind is not dict:
        return obj
    if _TAG not in obj:
        return {k: decode_state(v, f"{where}[{k!r}]") for k, v in obj.items()}
    tag = obj[_TAG]
    if tag == "dict":
        return {k: decode_state(v, f"{where}[{k!r}]") for k, v in obj["items"]}
    cls = _TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        raise ValueError(f"{where} has the type tag {tag!r}, not one this version decodes "
                         f"({['dict', *sorted(_TYPES)]}); the file was not written by this version of rlvr")
    try:
        return cls(**{k: decode_state(v, f"{where}.{k}") for k, v in obj["fields"].items()})
    except (TypeError, KeyError) as e:
        raise ValueError(f"{where}: the saved fields do not make a {tag} of this version ({e!r})") from None


def _prune(root: Path, keep_last: int) -> None:
    done = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)))
    for _, p in done[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    for p in [*root.glob(".tmp-step_*"), *root.glob(".old-step_*")]:  # leftovers of a killed save
        shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m launch.checkpoint",
                                     description="Convert a checkpoint's pickled driver state (older rlvr versions).")
    parser.add_argument("command", choices=["upgrade"])
    parser.add_argument("path", help="a checkpoint directory, e.g. outputs/run/checkpoints/step_100; its "
                                     f"{LEGACY_DRIVER_STATE} is unpickled (runs code): upgrade only one you trust")
    print(f"wrote {upgrade(parser.parse_args().path)}")
