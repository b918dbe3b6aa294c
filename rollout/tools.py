"""Tools for multi-turn rollouts: plain Python functions, resolved and checked at start-up, and the parsers
that find a tool call in what the model generated.

A tool is a function with a docstring and typed arguments that returns a string (the observation the model
reads next):

    def lookup(city: str, year: int = 2024) -> str:
        \"\"\"Population of a city in a year.\"\"\"
        ...

It is named like a reward function: a built-in (`calculator`), "pkg.module:fn" or "path/to/file.py:fn"
(rl.registry.load_object). Its schema (name, description, JSON types of the arguments) is what a chat
template's own tool-call syntax is given (`Tool.schema`, the OpenAI function format that
`tokenizer.apply_chat_template(..., tools=...)` takes).

Two call formats (`parse_call`):

- `json`: `<tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>`, the syntax of
  the Hermes / Qwen2.5 chat templates, for models that were trained on it;
- `tag`: `<calculator>12*7</calculator>`, for a tool with one argument (its value is the text between the
  tags), for small models without a tool-call template.

What is still to come (the multi-turn rollout loop that runs these tools in the reward sandbox, the other
built-ins) is tracked in the project's issue on multi-turn tool use; nothing calls this module yet but its tests.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import operator
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable

from rl.registry import PluginError, load_object

BUILTINS: dict[str, str] = {
    "calculator": "rollout.tools:calculator",
}
"""Built-in tool name -> "module:function"."""

FORMATS = ("json", "tag")
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOOL_HINT = 'def my_tool(query: str, k: int = 3) -> str:\n    """What it does, in one line."""'


class ToolSpecError(ValueError):
    """A tool spec cannot be resolved or its function has the wrong shape."""


@dataclass(frozen=True)
class Tool:
    name: str
    spec: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, str]
    """Argument name -> JSON type (string, integer, number, boolean), in signature order."""
    required: tuple[str, ...]
    """Arguments without a default."""

    def schema(self) -> dict[str, Any]:
        """The OpenAI function schema (what chat templates with tool support render)."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": {k: {"type": t} for k, t in self.parameters.items()},
                           "required": list(self.required)}}}

    def bind(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the function takes them; ToolCallError naming what is wrong, for the model to read."""
        unknown = sorted(set(arguments) - set(self.parameters))
        if unknown:
            raise ToolCallError(f"{self.name} takes no argument {unknown[0]!r}; its arguments: "
                                f"{', '.join(self.parameters) or 'none'}")
        missing = [k for k in self.required if k not in arguments]
        if missing:
            raise ToolCallError(f"{self.name} needs the argument {missing[0]!r}")
        out = {}
        for k, v in arguments.items():
            out[k] = _coerce(self.name, k, self.parameters[k], v)
        return out


class ToolCallError(ValueError):
    """A call the model wrote that cannot run: its message is the observation the model gets instead."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    end: int
    """Index in the text just after the call (where the observation goes)."""


def resolve_tools(specs: list[str]) -> list[Tool]:
    """Every spec resolved and its function checked, before any model loads; ToolSpecError names the spec and
    the fix."""
    tools: list[Tool] = []
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise ToolSpecError(f"rollout.tools entry {spec!r}: expected a built-in ({', '.join(BUILTINS)}), "
                                "'pkg.module:fn' or 'path/to/file.py:fn'")
        target = BUILTINS.get(spec.strip(), spec.strip())
        if ":" not in target:
            raise ToolSpecError(f"rollout.tools entry {spec!r}: not a built-in ({', '.join(BUILTINS)}); name a "
                                "function as 'pkg.module:fn' or 'path/to/file.py:fn'")
        try:
            fn = load_object(target, what="rollout.tools entry", shown=spec)
        except PluginError as e:
            raise ToolSpecError(str(e)) from None
        tools.append(_check(spec, fn))
    seen: dict[str, str] = {}
    for t in tools:
        if t.name in seen:
            raise ToolSpecError(f"rollout.tools: {seen[t.name]!r} and {t.spec!r} are both named {t.name!r}; a model "
                                "calls tools by name, so each needs its own (rename one function)")
        seen[t.name] = t.spec
    return tools


def _check(spec: str, fn: Callable[..., Any]) -> Tool:
    where = f"rollout.tools entry {spec!r}"
    if not inspect.isfunction(fn) or inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        raise ToolSpecError(f"{where}: a tool is a plain function returning a string, like\n{_TOOL_HINT}")
    name = fn.__name__
    if not _NAME_RE.match(name):
        raise ToolSpecError(f"{where}: {name!r} is not a name a model can call; use letters, digits and _")
    doc = inspect.getdoc(fn)
    if not doc:
        raise ToolSpecError(f"{where}: {name} has no docstring; the model reads it to know what the tool does, "
                            f"like\n{_TOOL_HINT}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001 - an annotation that does not evaluate
        raise ToolSpecError(f"{where}: the annotations of {name} do not evaluate ({e})") from None
    params: dict[str, str] = {}
    required = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolSpecError(f"{where}: {name} takes *{'*' if p.kind is p.VAR_KEYWORD else ''}{p.name}; a tool "
                                "names every argument the model may pass, each with a type")
        kind = JSON_TYPES.get(hints.get(p.name))  # type: ignore[arg-type]
        if kind is None:
            got = hints.get(p.name, "no annotation")
            raise ToolSpecError(f"{where}: argument {p.name!r} of {name} has {got}; annotate it as str, int, float "
                                "or bool (the types a tool call can carry)")
        params[p.name] = kind
        if p.default is p.empty:
            required.append(p.name)
    if hints.get("return", str) is not str:
        raise ToolSpecError(f"{where}: {name} is annotated to return {hints['return']}; a tool returns the str the "
                            "model reads")
    return Tool(name=name, spec=spec, fn=fn, description=doc.split("\n\n")[0].replace("\n", " "),
                parameters=params, required=tuple(required))


def _coerce(tool: str, name: str, kind: str, value: Any) -> Any:
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
    elif kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
    elif kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    raise ToolCallError(f"{tool}: argument {name!r} must be {'an' if kind == 'integer' else 'a'} {kind}, "
                        f"got {value!r}")


# -- finding a call in generated text ---------------------------------------------------------------
def stop_strings(fmt: str, tools: list[Tool]) -> list[str]:
    """The strings that end a tool call: generation stops there for the tool to run."""
    _check_format(fmt)
    return ["</tool_call>"] if fmt == "json" else [f"</{t.name}>" for t in tools]


def parse_call(text: str, fmt: str, tools: list[Tool]) -> ToolCall | None:
    """The first complete tool call in `text`, or None when it holds none (a final answer).

    ToolCallError for a call that is there but cannot run (unknown tool, malformed JSON, bad arguments): the
    rollout returns its message to the model as the observation, as it would a failing tool."""
    _check_format(fmt)
    by_name = {t.name: t for t in tools}
    if fmt == "json":
        m = re.search(r"<tool_call>(.*?)</tool_call>", text, re.S)
        if m is None:
            return None
        try:
            body = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            raise ToolCallError(f"the tool call is not valid JSON ({e.msg} at character {e.pos}); write "
                                '<tool_call>{"name": "...", "arguments": {...}}</tool_call>') from None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ToolCallError('a tool call is {"name": "...", "arguments": {...}}')
        args = body.get("arguments", {})
        if isinstance(args, str):  # some templates serialise the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                raise ToolCallError("the tool call's arguments are not a JSON object") from None
        if not isinstance(args, dict):
            raise ToolCallError("the tool call's arguments are not a JSON object")
        tool = by_name.get(body["name"])
        if tool is None:
            raise ToolCallError(f"there is no tool {body['name']!r}; the tools are {', '.join(by_name)}")
        return ToolCall(tool.name, tool.bind(args), m.end())
    names = "|".join(re.escape(n) for n in by_name)
    m = re.search(rf"<({names})>(.*?)</\1>", text, re.S) if names else None
    if m is None:
        return None
    tool = by_name[m.group(1)]
    if len(tool.parameters) != 1:
        raise ToolCallError(f"{tool.name} takes {len(tool.parameters)} arguments; the tag format carries one")
    (param,) = tool.parameters
    return ToolCall(tool.name, tool.bind({param: m.group(2).strip()}), m.end())


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"tool-call format {fmt!r}: use one of {', '.join(FORMATS)}")


# -- built-ins ------------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 100
MAX_DIGITS = 300


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return f"error: {expression!r} is not an arithmetic expression"
    try:
        value = _eval(tree.body)
    except ZeroDivisionError:
        return "error: division by zero"
    except OverflowError:
        return "error: the result is too large"
    except ValueError as e:
        return f"error: {e}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "error: the result is not a finite number"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(round(value, 10))
    return str(value)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is larger than {MAX_EXPONENT}")
        out = _BINARY[type(node.op)](left, right)
        if isinstance(out, int) and abs(out).bit_length() > MAX_DIGITS * 3.33:
            raise ValueError(f"the result has more than {MAX_DIGITS} digits")
        return out
    raise ValueError(f"{ast.unparse(node)!r} is not a number or an arithmetic operation")
