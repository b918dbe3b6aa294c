"""The one-shot child of the `code` verifier: `python -I reward/code_child.py`, a JSON job on stdin.

It confines itself first (reward/sandbox.py, imported as a sibling module: the script runs outside the
package, with the standard library only), then runs the completion's program: in "io" mode on the job's
input (the parent compares what it prints), in "assert" mode followed by the probes planned by
reward/code_asserts.py, whose values it prints in a strict encoding (`encode_result`). It never holds an
expected value, a verdict or a secret.
"""

from __future__ import annotations

import os
import sys



def _load_sibling(name: str) -> object:
    """Import reward/<name>.py by its path: `python -I` puts neither the script's directory nor the package on
    sys.path (and putting reward/ there would let its types.py shadow the standard library's)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if __package__:
    from reward.sandbox import Limits, SandboxUnavailable, enter_sandbox
else:  # run as a script: the sibling modules, syscall_filter first (sandbox imports it by that name)
    _load_sibling("syscall_filter")
    _sandbox = _load_sibling("sandbox")
    Limits, SandboxUnavailable, enter_sandbox = _sandbox.Limits, _sandbox.SandboxUnavailable, _sandbox.enter_sandbox  # type: ignore[attr-defined]

REFUSED_RC = 3
"""Exit status of a one-shot child that could not reach its level (before any job code ran)."""


RESULTS_PREFIX = "#code-verifier-results "
"""Starts the child's last stdout line in "assert" mode: the JSON list of encoded probe results. No secret:
a solution may print a forged line, but the child holds no expected value, so it can only forge values
it could as well have returned."""
ENCODE_MAX_DEPTH = 64
"""Nesting deeper than this (or a container that contains itself) is not encoded: the value is opaque."""
ENCODE_MAX_NODES = 100_000
"""Values in one probe result beyond this are not encoded either (the 1 MiB output cap would cut it anyway)."""


def _child_main() -> int:
    """One-shot child of the `code` verifier: read a JSON job on stdin, confine, run it.

    The job is {"limits", "workdir", "level", "mode": "assert"|"io", "solution"} plus "steps" (assert) or
    "input" (io); it is confined at `level` or better (a refusal exits with REFUSED_RC, its message on
    stderr). Without a "mode" it only confines itself and exits 0 (a probe). In "io" mode the solution
    reads "input" on stdin; the parent compares what it prints. In "assert" mode the job holds the probes
    of reward/code_asserts.py, never an expected value: see _run_probes. A solution that exits early
    (sys.exit(0), os._exit(0)) leaves no result line, and its test fails.
    """
    import io
    import json

    job = json.loads(sys.stdin.buffer.read())
    try:
        enter_sandbox(Limits(**job["limits"]), job["workdir"], level=job.get("level", "full"), at_least=True)
    except SandboxUnavailable as exc:
        sys.stderr.write(f"{exc}\n")
        return REFUSED_RC
    if "mode" not in job:
        return 0
    sys.stdin = io.TextIOWrapper(io.BytesIO(job.get("input", "").encode()))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(job["solution"], "<solution>", "exec"), namespace)
    if job["mode"] == "assert":
        _run_probes(job["steps"], namespace)
    return 0


def _run_probes(steps: list, namespace: dict) -> None:
    """Evaluate each step's probes in the solution's namespace, then exec its "then" statement (a binding of
    the test that later probes read); print the encoded results as the last line.

    Each value is encoded as soon as its probe returns (a later call cannot change what was compared) and
    kept in `__probe__` for the "then" statements. An exception is recorded by class name and does not
    stop the other probes; an exception in a "then" statement ends the child (the parent fails the test
    on the same statement)."""
    import json

    values: list = []
    encoded: list = []
    for step in steps:
        for source in step["probes"]:
            try:
                value = eval(compile(source, "<probe>", "eval"), namespace)
            except Exception as exc:
                values.append(None)
                encoded.append({"raised": _type_name(type(exc))})
                continue
            values.append(value)
            encoded.append(encode_result(value))
        if step["then"] is not None:
            namespace["__probe__"] = values
            exec(compile(step["then"], "<test>", "exec"), namespace)
    sys.stdout.flush()
    line = memoryview(f"\n{RESULTS_PREFIX}{json.dumps(encoded)}\n".encode())
    while line:
        line = line[os.write(1, line):]


class _NotEncoded(Exception):
    pass


def encode_result(value: object) -> dict:
    """{"value": tree} for a value made only of exact builtin types, else {"opaque": what it was}.

    Strict on purpose: `type(x) is int`, never isinstance, so no subclass, `__eq__`, `__repr__`, `__iter__` or
    `__hash__` of the candidate's runs here or reaches the parent. A tree is ["none"], ["bool", b],
    ["int", decimal], ["float", float.hex], ["complex", [re_hex, im_hex]], ["str", s], ["bytes", hex],
    ["list" | "tuple" | "set" | "frozenset", [items]] or ["dict", [[key, value], ...]].
    """
    nodes = 0

    def tree(x: object, depth: int) -> list:
        nonlocal nodes
        nodes += 1
        if nodes > ENCODE_MAX_NODES or depth > ENCODE_MAX_DEPTH:
            raise _NotEncoded(f"a value over the caps ({ENCODE_MAX_NODES} values, {ENCODE_MAX_DEPTH} levels)")
        kind = type(x)
        if x is None:
            return ["none"]
        if kind is bool:
            return ["bool", x is True]
        if kind is int:
            return ["int", int.__repr__(x)]  # over sys.get_int_max_str_digits() raises ValueError
        if kind is float:
            return ["float", float.hex(x)]
        if kind is complex:
            return ["complex", [float.hex(complex.real.__get__(x)), float.hex(complex.imag.__get__(x))]]
        if kind is str:
            return ["str", x]
        if kind is bytes:
            return ["bytes", bytes.hex(x)]
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            return [_type_name(kind), [tree(item, depth + 1) for item in x]]
        if kind is dict:
            return ["dict", [[tree(k, depth + 1), tree(v, depth + 1)] for k, v in dict.items(x)]]
        raise _NotEncoded(f"a {_type_name(kind)} object")

    try:
        return {"value": tree(value, 0)}
    except _NotEncoded as exc:
        return {"opaque": str(exc)}
    except (ValueError, RuntimeError) as exc:  # an int too long to print; a container changed while read
        return {"opaque": f"a value that could not be encoded ({_type_name(type(exc))})"}


def _type_name(kind: type) -> str:
    """The class's own name, read from the type slot: a metaclass cannot substitute its own `__name__`."""
    return type.__dict__["__name__"].__get__(kind)


if __name__ == "__main__":
    sys.exit(_child_main())
