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

A spec can also be a dict that binds arguments the model never sees (a corpus path, a result count):
`{"fn": "search", "args": {"corpus": "data/wiki.jsonl", "k": 3}}`; a bound argument that names an existing
file is shown, read-only, inside the sandbox.

`rollout.tool_runner.ToolRunner` runs calls in sandboxed worker processes (reward/pool.py, kind "tool") under a
per-call deadline: a tool that raises, crashes, returns a non-string or runs past its deadline gives the model an
error observation ("error: ..."), never a stalled step. rollout/multiturn.py drives the turns.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import operator
import re
import typing
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from rl.registry import PluginError, is_file_spec, load_object

BUILTINS: dict[str, str] = {
    "calculator": "rollout.tools:calculator",
    "python": "rollout.tools:python",
    "search": "rollout.search:search",
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
    bound: dict[str, Any] = field(default_factory=dict)
    """Arguments fixed by the spec's `args` (not in the schema: the model does not pass them)."""

    @property
    def target(self) -> str:
        """The "module:fn" or absolute "file.py:fn" that resolves to this tool in another process."""
        where, _, attr = BUILTINS.get(self.spec, self.spec).rpartition(":")
        return f"{os.path.abspath(where)}:{attr}" if is_file_spec(where) else f"{where}:{attr}"

    def pool_spec(self) -> dict[str, Any]:
        """What a tool worker (reward/pool_worker.py) resolves this tool from, with the files it must see."""
        files = sorted({os.path.abspath(v) for v in self.bound.values() if isinstance(v, str) and os.path.isfile(v)})
        return {"fn": self.target, "args": dict(self.bound), "files": files}

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


def resolve_tools(specs: list[str | dict[str, Any]]) -> list[Tool]:
    """Every spec resolved and its function checked, before any model loads; ToolSpecError names the spec and
    the fix. A spec is a string or {"fn": spec, "args": {bound arguments}}."""
    tools: list[Tool] = []
    for entry in specs:
        bound: dict[str, Any] = {}
        spec = entry
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"fn", "args"})
            if extra or "fn" not in entry:
                raise ToolSpecError(f"rollout.tools entry {entry!r}: a dict entry has the keys fn and args "
                                    f"(got {sorted(entry)}), like {{fn: search, args: {{corpus: docs.jsonl}}}}")
            spec, bound = entry["fn"], entry.get("args") or {}
            if not isinstance(bound, dict) or not all(isinstance(k, str) for k in bound):
                raise ToolSpecError(f"rollout.tools entry {entry!r}: args must map argument names to values")
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
        tools.append(_check(spec.strip(), fn, bound))
    seen: dict[str, str] = {}
    for t in tools:
        if t.name in seen:
            raise ToolSpecError(f"rollout.tools: {seen[t.name]!r} and {t.spec!r} are both named {t.name!r}; a model "
                                "calls tools by name, so each needs its own (rename one function)")
        seen[t.name] = t.spec
    return tools


def _check(spec: str, fn: Callable[..., Any], bound: dict[str, Any]) -> Tool:
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
    signature = inspect.signature(fn).parameters
    unknown = sorted(set(bound) - set(signature))
    if unknown:
        raise ToolSpecError(f"{where}: args binds {unknown[0]!r}, which {name} does not take; its arguments: "
                            f"{', '.join(signature) or 'none'}")
    for p in signature.values():
        if p.name in bound:
            continue
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
    needs = getattr(fn, "needs_bound", ())  # a built-in's setting that has no default (search: its corpus)
    missing = [k for k in needs if k not in bound]
    if missing:
        raise ToolSpecError(f"{where}: {name} needs args.{missing[0]}, like {{fn: {spec}, args: {{{missing[0]}: "
                            f"...}}}}; {getattr(fn, 'needs_hint', '')}".rstrip("; "))
    if not params:
        raise ToolSpecError(f"{where}: {name} takes no argument the model passes; a tool reads at least one")
    return Tool(name=name, spec=spec, fn=fn, description=doc.split("\n\n")[0].replace("\n", " "),
                parameters=params, required=tuple(required), bound=dict(bound))


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


def python(code: str) -> str:
    """Run Python code and return what it prints (print() the values you need)."""
    import contextlib
    import io
    import traceback

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(code, "<tool call>", "exec"), {"__name__": "__main__"})  # noqa: S102 - runs in the sandbox
    except BaseException as e:  # noqa: BLE001 - the model reads what went wrong
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return (out.getvalue() + f"error: {last}").strip()
    text = out.getvalue().strip()
    return text if text else "(no output: print() what you want to see)"


# -- what the model is told, and what it reads back ------------------------------------------------
RESPONSE_TEMPLATES = {"json": "\n<tool_response>\n{observation}\n</tool_response>\n",
                      "tag": "<result>{observation}</result>"}
"""How an observation is appended after a call, per format (rollout.tool_response_template overrides it)."""


def instructions(fmt: str, tools: list[Tool]) -> str:
    """The system-prompt text that tells a model which tools it has and how to call them, for chat templates
    that do not render tools themselves (and for every model in the tag format)."""
    _check_format(fmt)
    if fmt == "json":
        listing = "\n".join(json.dumps(t.schema()["function"]) for t in tools)
        return ("You can call tools. To call one, write <tool_call>{\"name\": <tool name>, \"arguments\": "
                "<arguments as a JSON object>}</tool_call> and stop; its result follows inside "
                "<tool_response></tool_response>. When you know the answer, give it without a tool call.\n"
                f"Tools:\n{listing}")
    lines = "\n".join(f"- <{t.name}>{next(iter(t.parameters))}</{t.name}>: {t.description}" for t in tools)
    return ("You can use tools. To use one, write its tag around its input and stop; its result follows inside "
            f"<result></result>. When you know the answer, give it without a tool.\nTools:\n{lines}")


@dataclass(frozen=True)
class ToolPrompt:
    """How the prompts tell the model about its tools (rollout.data.render_prompt)."""
    schemas: list[dict[str, Any]] | None
    """Given to the chat template (`apply_chat_template(..., tools=schemas)`) when it renders tools itself."""
    instructions: str | None
    """Otherwise: text added to the system prompt (or before a prompt without a chat template)."""


def tool_prompt(tokenizer: Any, fmt: str, tools: list[Tool]) -> ToolPrompt:
    """The json format uses the chat template's own tool rendering when it has one (a template that renders the
    schemas: Qwen2.5, Hermes, Llama 3.1, ...); the tag format, and templates without tool support, get
    `instructions` in the system prompt."""
    _check_format(fmt)
    schemas = [t.schema() for t in tools]
    if fmt == "json" and getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "x"}]
        try:
            plain = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            with_tools = tokenizer.apply_chat_template(probe, tools=schemas, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that cannot take tools: tell the model in the system prompt
            with_tools = plain = None
        if with_tools != plain and all(t.name in with_tools for t in tools):
            return ToolPrompt(schemas, None)
    return ToolPrompt(None, instructions(fmt, tools))


def check_tag_format(tools: list[Tool]) -> None:
    """The tag format carries one argument per call: every tool must take exactly one."""
    for t in tools:
        if len(t.parameters) != 1:
            raise ToolSpecError(f"rollout.tools entry {t.spec!r}: {t.name} takes {len(t.parameters)} arguments "
                                f"({', '.join(t.parameters)}) but rollout.tool_format=tag carries one; use "
                                "rollout.tool_format=json, or bind the others in the entry's args")
