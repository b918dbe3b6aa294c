"""Assert tests of the `code` verifier, decided in the reward worker and not in the candidate's interpreter.

A test such as `assert add(1, 2) == 3` is split in two by `plan_assert_test`. The candidate-dependent
sub-expressions ("probes", here `add(1, 2)`) go to the sandboxed child as source text; the child runs the
solution, evaluates each probe and sends back its value in a strict encoding (exact builtin types only,
see `code_child.encode_result`). The rest of the assert, with its expected values, never leaves this process:
`decide` evaluates it here with the decoded values in place of the probes. A solution that lies in
`__eq__`, reads secrets from the harness's frames or forges the result line gains nothing, since the child
holds no expected value and no verdict.

The rule, applied statement by statement in test order:

- A name belongs to the candidate unless the test binds it itself by a statement that runs no candidate
  code (an import, a function or class whose body uses no candidate name, an assignment whose value has
  no probe), or it is a builtin the solution does not rebind. A name a statement with probes binds
  belongs to the candidate; so does an assigned variable of the test once a probe mentions it (the
  candidate may have mutated it: `lst = [3, 1]; sort_in_place(lst); assert lst == [1, 3]` reads `lst`
  back from the child). Imported names, functions and classes of the test stay the test's.
- A probe is the outermost chain of calls, attribute reads and subscripts rooted at a candidate name:
  `f(x)`, `f(x)[0]`, `Solution().solve(3)`, a bare candidate variable `res`. Everything around it, such
  as `==`, `math.isclose(...)`, `sorted(...)`, `abs(... - y) < 1e-6`, is evaluated here.
- The child gets the solution, the probes, and only the test statements later probes need (the
  assignments and imports that bind names a probe reads, and `obj = Solution()` style bindings), never
  an assert. A statement that binds a probe's input and an expected value together (`x, want = 3, 9`)
  hands both to the child: keep them in separate statements.
- `def check(candidate): ...` followed by `check(name)` (HumanEval) is inlined: the body is processed as
  top-level statements with `candidate` renamed to `name`.

What cannot be decided this way raises UndecidableTest with the reason; the verifier counts the test
as failed and undecided, never passed: loops and other compound statements, `del`, `global`, a walrus,
a probe that uses a comprehension's or lambda's own variable (`all(f(i) == i for i in ...)`), a
function or class of the test that calls candidate code, a star import, assignment to an attribute
or item, a test without an assert.
"""

from __future__ import annotations

import ast
import builtins
import copy
import json
import symtable
from dataclasses import dataclass
from types import CodeType
from typing import Any

from reward.code_child import ENCODE_MAX_DEPTH, RESULTS_PREFIX

PROBE_NAME = "__probe__"
"""The list of probe values, in the child (the real objects) and here (the decoded ones)."""
_BUILTIN_NAMES = frozenset(vars(builtins))
_SIMPLE = (ast.Assert, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SCOPES = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


class UndecidableTest(ValueError):
    """The test cannot be split into probes and a parent-side verdict; the message says why and what to write."""


class ProbeRaised(BaseException):
    """A probe raised in the child. A BaseException, so that no `except Exception` of the test catches it:
    the statement that needed the value fails, and with it the test."""


class OpaqueValue:
    """A probe value the child would not encode (not an exact builtin, or over the caps). It can be bound to a
    name and passed to later probes in the child, but comparing it, testing its truth or hashing it raises:
    an assert that looks at it fails."""

    __slots__ = ("what",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, what: str) -> None:
        self.what = what

    def _refuse(self, *args: Any) -> Any:
        raise TypeError(f"the candidate returned {self.what}, which the code verifier does not compare")

    __eq__ = __ne__ = __bool__ = _refuse

    def __repr__(self) -> str:
        return f"<opaque: {self.what}>"


@dataclass(frozen=True)
class AssertPlan:
    """One assert test, split: `child_steps` go to the sandboxed child, `parent_code` runs here in order.

    child_steps: [{"probes": [source, ...], "then": source | None}], JSON-ready; the child evaluates the probes
    in order (appending each value to `__probe__`) and then execs `then`, a test statement later probes need.
    parent_code: ("assert", code) to evaluate and require truthy, ("exec", code) to run; both read `__probe__[k]`.
    """

    child_steps: tuple[dict[str, Any], ...]
    parent_code: tuple[tuple[str, CodeType], ...]
    num_probes: int


def plan_assert_test(test: str, solution: str) -> AssertPlan:
    """Split `test` (module source with asserts) into probes for the child and a verdict for this process.

    >>> plan = plan_assert_test("import math\\nassert math.isclose(area(2), 12.566, rel_tol=1e-3)", "")
    >>> plan.child_steps
    ({'probes': ['area(2)'], 'then': None},)
    >>> plan_assert_test("for i in range(3):\\n    assert f(i) == i", "")
    Traceback (most recent call last):
    ...
    reward.code_asserts.UndecidableTest: line 1: a `for` statement cannot be decided outside the candidate's ...
    """
    if PROBE_NAME in test:
        raise UndecidableTest(f"the test uses the name {PROBE_NAME}, which the code verifier reserves")
    try:
        tree = ast.parse(test)
    except SyntaxError as exc:
        raise UndecidableTest(f"the test does not parse: {exc}") from None
    body = _inline_checks(tree.body)
    plan = _Planner(_solution_names(solution)).plan(body)  # raises first on a statement it cannot split
    if not any(kind == "assert" for kind, _ in plan.parent_code):
        raise UndecidableTest("the test has no assert statement")
    return plan


def decode_results(stdout: bytes, count: int) -> list[Any] | None:
    """The `count` probe results on the child's last output line, or None if that line is missing or malformed
    (the test then fails: a solution that exits early or prints a forged line gains nothing by it)."""
    lines = stdout.decode(errors="replace").rstrip("\n").rsplit("\n", 1)
    if not lines[-1].startswith(RESULTS_PREFIX):
        return None
    try:
        entries = json.loads(lines[-1][len(RESULTS_PREFIX):])
        if type(entries) is not list or len(entries) != count:
            return None
        return [_decode_entry(entry) for entry in entries]
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return None


def decide(plan: AssertPlan, results: list[Any]) -> bool:
    """Run the test here, with the decoded probe values: True when every assert holds and nothing raised."""
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "__test__", PROBE_NAME: _ProbeValues(results)}
    try:
        for kind, code in plan.parent_code:
            if kind == "assert":
                if not eval(code, namespace):
                    return False
            else:
                exec(code, namespace)
    except (Exception, ProbeRaised):
        return False
    return True


class _ProbeValues:
    def __init__(self, results: list[Any]) -> None:
        self._results = results

    def __getitem__(self, k: int) -> Any:
        value = self._results[k]
        if isinstance(value, ProbeRaised):
            raise value
        return value


def _decode_entry(entry: dict[str, Any]) -> Any:
    if type(entry) is not dict:
        raise ValueError("malformed entry")
    [(kind, payload)] = entry.items()
    if kind == "value":
        return _decode(payload, 0)
    if kind == "raised":
        return ProbeRaised(f"the candidate raised {str(payload)[:100]}")
    if kind == "opaque":
        return OpaqueValue(str(payload)[:200])
    raise KeyError(kind)


_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def _decode(node: list[Any], depth: int) -> Any:
    """The inverse of code_child.encode_result's value tree; anything else raises (a forged or broken line)."""
    if depth > ENCODE_MAX_DEPTH or type(node) is not list:
        raise ValueError("malformed value")
    if node == ["none"]:
        return None
    tag, payload = node
    if tag == "bool" and type(payload) is bool:
        return payload
    if tag in ("int", "str", "bytes", "float") and type(payload) is str:
        return {"int": int, "str": str, "bytes": bytes.fromhex, "float": float.fromhex}[tag](payload)
    if tag == "complex" and type(payload) is list:
        return complex(float.fromhex(payload[0]), float.fromhex(payload[1]))
    if tag in _SEQUENCES and type(payload) is list:
        return _SEQUENCES[tag](_decode(item, depth + 1) for item in payload)
    if tag == "dict" and type(payload) is list:
        return {_decode(k, depth + 1): _decode(v, depth + 1) for k, v in payload}
    raise ValueError("malformed value")


def _solution_names(solution: str) -> set[str]:
    """Names the solution binds at module level (so `def sorted(...)` in a solution makes `sorted` the candidate's)."""
    try:
        table = symtable.symtable(solution, "<solution>", "exec")
    except (SyntaxError, ValueError):
        return set()  # the child fails on it anyway
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


def _global_reads(source: str, mode: str) -> set[str]:
    """Names `source` reads from the module namespace, by the compiler's own scoping rules."""
    names: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            if sym.is_referenced() and (table.get_type() == "module" or sym.is_global()):
                names.add(sym.get_name())
        for child in table.get_children():
            visit(child)

    visit(symtable.symtable(source, "<test>", mode))
    return names


def _inline_checks(body: list[ast.stmt]) -> list[ast.stmt]:
    """Replace `check(name)` by the body of `def check(candidate)` with `candidate` renamed, when `check` is
    used only that way; the def itself is dropped (it would need the candidate's names to be defined)."""
    defs = {node.name: node for node in body if isinstance(node, ast.FunctionDef) and _one_parameter(node)}
    calls = {name: [node for node in body if _call_of(node) == name] for name in defs}
    names = [n.id for n in ast.walk(ast.Module(body, [])) if isinstance(n, ast.Name)]
    uses = {name: names.count(name) for name in defs}
    inline = {name for name in defs if calls[name] and uses[name] == len(calls[name])}
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name in inline:
            continue
        name = _call_of(node)
        if name in inline:
            arg = node.value.args[0]  # type: ignore[attr-defined]  # _call_of checked the shape
            renamed = _Rename(defs[name].args.args[0].arg, arg.id)
            out.extend(renamed.visit(copy.deepcopy(stmt)) for stmt in defs[name].body)
        else:
            out.append(node)
    return out


def _one_parameter(node: ast.FunctionDef) -> bool:
    a = node.args
    extra = a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults
    return not node.decorator_list and len(a.args) == 1 and not extra


def _call_of(node: ast.stmt) -> str | None:
    """`f` for a statement `f(name)`, else None."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
        call = node.value
        if len(call.args) == 1 and isinstance(call.args[0], ast.Name) and not call.keywords:
            return call.func.id
    return None


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id == self.old:
            node.id = self.new
        return node


def _chain_root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Call, ast.Attribute, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _target_names(target: ast.expr, line: int) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(t, line) for t in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value, line)
    raise UndecidableTest(f"line {line}: assignment to `{ast.unparse(target)}`: the test may assign only to names")


class _Planner:
    """Walks the test's statements in order, tracking which names are the test's and which the candidate's."""

    def __init__(self, solution_names: set[str]) -> None:
        self.solution_names = solution_names
        self.trusted: set[str] = set()  # bound by a statement of the test that ran no candidate code
        self.variables: set[str] = set()  # the trusted names bound by assignment: a probe may mutate them
        self.owned: set[str] = set()  # bound by candidate code, or handed to it
        self.probes: list[tuple[str, set[str]]] = []  # (source, names it reads)

    def is_candidate(self, name: str) -> bool:
        if name in self.owned:
            return True
        return name not in self.trusted and (name not in _BUILTIN_NAMES or name in self.solution_names)

    def plan(self, body: list[ast.stmt]) -> AssertPlan:
        # (statement for the child or None, names it binds, names it reads, probe indices)
        steps: list[tuple[str | None, set[str], set[str], range]] = []
        parent: list[tuple[str, CodeType]] = []
        for node in body:
            if isinstance(node, ast.Pass):
                continue
            first = len(self.probes)
            kind, stmt, binds = self._statement(node)
            probes = range(first, len(self.probes))
            for name in binds:  # after the statement: its bindings are the test's only if it ran no candidate code
                if probes:
                    self._own(name)
                else:
                    self._trust(name, variable=isinstance(node, _SIMPLE))
            for k in probes:
                for name in self.probes[k][1] & self.variables & self.trusted:
                    self._own(name)
            if kind == "assert":
                assert isinstance(stmt, ast.Assert)
                test = ast.fix_missing_locations(ast.Expression(stmt.test))
                parent.append(("assert", compile(test, f"<test line {node.lineno}>", "eval")))
                steps.append((None, set(), set(), probes))
            else:
                parent.append(("exec", compile(ast.fix_missing_locations(ast.Module([stmt], [])), "<test>", "exec")))
                source = ast.unparse(stmt)
                steps.append((source, binds, _global_reads(source, "exec") - {PROBE_NAME}, probes))
        return AssertPlan(self._child_steps(steps), tuple(parent), len(self.probes))

    def _child_steps(self, steps: list[tuple[str | None, set[str], set[str], range]]) -> tuple[dict[str, Any], ...]:
        """Backwards liveness: a statement goes to the child only if it binds a name a later probe or statement
        sent there reads. So expected values bound by the test (`want = [1, 2]`) stay here."""
        needed: set[str] = set()
        out: list[dict[str, Any]] = []
        for source, binds, reads, probes in reversed(steps):
            then = source if binds & needed else None
            if then is not None:
                needed = (needed - binds) | reads
            for k in probes:
                needed |= self.probes[k][1]
            if then is not None or probes:
                out.append({"probes": [self.probes[k][0] for k in probes], "then": then})
        return tuple(reversed(out))

    def _trust(self, name: str, variable: bool) -> None:
        self.trusted.add(name)
        self.owned.discard(name)
        (self.variables.add if variable else self.variables.discard)(name)

    def _own(self, name: str) -> None:
        self.trusted.discard(name)
        self.owned.add(name)

    def _statement(self, node: ast.stmt) -> tuple[str, ast.stmt, set[str]]:
        """(kind, the statement with its probes cut out, the names it binds)."""
        line = node.lineno
        cut = _ProbeCutter(self, line)
        if isinstance(node, ast.Assert):  # the message is dropped: it may call the candidate, and decides nothing
            return "assert", ast.Assert(test=cut.visit(node.test), msg=None), set()
        if isinstance(node, ast.Expr):
            return "exec", ast.Expr(cut.visit(node.value)), set()
        if isinstance(node, ast.Assign):
            binds = set().union(*(_target_names(t, line) for t in node.targets))
            return "exec", ast.Assign(targets=node.targets, value=cut.visit(node.value)), binds
        if isinstance(node, ast.AugAssign):  # x += v is read as x = x + v
            binds = _target_names(node.target, line)  # a name: the grammar allows no tuple here
            assert isinstance(node.target, ast.Name)
            value = ast.BinOp(left=ast.Name(node.target.id, ast.Load()), op=node.op, right=node.value)
            return "exec", ast.Assign(targets=[ast.Name(node.target.id, ast.Store())], value=cut.visit(value)), binds
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            binds = _target_names(node.target, line)
            return "exec", ast.Assign(targets=[node.target], value=cut.visit(node.value)), binds
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                raise UndecidableTest(f"line {line}: `{ast.unparse(node)}`: import the names the test uses by name")
            return "exec", node, {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        if isinstance(node, _DEFS):
            used = sorted(n for n in _global_reads(ast.unparse(node), "exec") - {node.name} if self.is_candidate(n))
            if used:
                raise UndecidableTest(
                    f"line {line}: the test's `{node.name}` uses {', '.join(used)}, which the test does not define: "
                    "a function of the test may not call the candidate (only `def check(candidate)` followed by "
                    "`check(name)` is supported)")
            return "exec", node, {node.name}
        what = type(node).__name__.lower().replace("asyncfunctiondef", "async def")
        raise UndecidableTest(f"line {line}: a `{what}` statement cannot be decided outside the candidate's "
                              "interpreter; write one assert per case")


class _ProbeCutter(ast.NodeTransformer):
    """Replaces each probe (outermost chain rooted at a candidate name) by `__probe__[k]`, top-down."""

    def __init__(self, planner: _Planner, line: int) -> None:
        self.planner, self.line = planner, line
        self.local_names: list[set[str]] = []  # variables of the enclosing comprehensions and lambdas

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.NamedExpr):
            raise UndecidableTest(f"line {self.line}: `:=` in a test: assign in a statement of its own")
        if isinstance(node, (ast.Call, ast.Attribute, ast.Subscript, ast.Name)) and not isinstance(
                getattr(node, "ctx", ast.Load()), (ast.Store, ast.Del)):
            root = _chain_root(node)
            local = any(root in names for names in self.local_names)
            if root is not None and not local and self.planner.is_candidate(root):
                return self._cut(node)
        if isinstance(node, ast.Lambda):
            a = node.args
            return self._scoped(node, {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if x})
        if isinstance(node, _SCOPES):
            targets = [n for gen in node.generators for n in ast.walk(gen.target)]
            return self._scoped(node, {n.id for n in targets if isinstance(n, ast.Name)})
        return self.generic_visit(node)

    def _scoped(self, node: ast.AST, names: set[str]) -> ast.AST:
        self.local_names.append(names)
        try:
            return self.generic_visit(node)
        finally:
            self.local_names.pop()

    def _cut(self, node: ast.expr) -> ast.expr:
        source = ast.unparse(node)
        reads = _global_reads(source, "eval")
        inner = sorted(reads & set().union(*self.local_names))
        if inner:
            raise UndecidableTest(
                f"line {self.line}: `{source}` uses {', '.join(inner)}, a variable of the comprehension or lambda "
                "around it, so the child cannot evaluate it alone: write one assert per case")
        k = len(self.planner.probes)
        self.planner.probes.append((source, reads))
        subscript = ast.Subscript(value=ast.Name(PROBE_NAME, ast.Load()), slice=ast.Constant(k), ctx=ast.Load())
        return ast.copy_location(subscript, node)
