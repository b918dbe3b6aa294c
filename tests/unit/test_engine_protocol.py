"""Every engine member rollout/worker.py uses is declared by `RolloutEngine` and defined by both engines.

The worker talks to its engine only through `self.engine`. A name it uses that one engine lacks fails
with an AttributeError on the first cluster that picks that engine, and vLLM has no CPU build, so no
CPU run would find it: hence a static check. `rollout.vllm` imports vLLM only inside
`VLLMEngine.__init__`, so the class is inspected here without vLLM; an engine's instance attributes
are the `self.<name>` its `__init__` assigns.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from rollout import worker
from rollout.engine import RolloutEngine
from rollout.hf_engine import HFEngine
from rollout.vllm import VLLMEngine


def _is_self_engine(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "engine"
            and isinstance(node.value, ast.Name) and node.value.id == "self")


def worker_uses() -> set[str]:
    """Every `self.engine.<name>` in rollout/worker.py."""
    tree = ast.parse(inspect.getsource(worker))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_self_engine(n.value)}


def protocol_members() -> set[str]:
    return {n for n in vars(RolloutEngine) if not n.startswith("_")} | set(RolloutEngine.__annotations__)


def init_attributes(cls: type) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id == "self"}


def test_the_worker_uses_only_what_the_protocol_declares():
    probes = [n for n in ast.walk(ast.parse(inspect.getsource(worker)))
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")
              and n.args and _is_self_engine(n.args[0])]
    assert not probes, "the worker probes its engine with getattr/hasattr: declare the member in RolloutEngine"
    used = worker_uses()
    # the parse found the worker's calls (else the check below would pass on nothing)
    assert {"generate", "load_weights", "tokenizer", "tensor_parallel_size", "init_weight_group",
            "receive_broadcast", "load_ipc_bucket"} <= used
    assert used <= protocol_members(), f"declare {sorted(used - protocol_members())} in rollout.engine.RolloutEngine"


@pytest.mark.parametrize("cls", [HFEngine, VLLMEngine], ids=lambda c: c.__name__)
def test_every_engine_defines_the_whole_protocol(cls):
    attributes = init_attributes(cls)
    assert "tokenizer" in attributes  # the parse found __init__'s assignments
    missing = sorted(n for n in protocol_members() if not hasattr(cls, n) and n not in attributes)
    assert not missing, f"{cls.__name__} lacks {missing} of RolloutEngine"
    for name in sorted(protocol_members()):
        declared = getattr(RolloutEngine, name, None)
        if callable(declared):  # same parameters, in the same order, as the protocol names them
            assert (list(inspect.signature(getattr(cls, name)).parameters)
                    == list(inspect.signature(declared).parameters)), f"{cls.__name__}.{name}"
