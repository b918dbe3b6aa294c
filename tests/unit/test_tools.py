"""Tool specs (rollout/tools.py): resolution and signature checks at start-up, the two call formats, and the
calculator built-in."""

from __future__ import annotations

import pytest

from rollout.tools import ToolCallError, ToolSpecError, calculator, parse_call, resolve_tools, stop_strings

TOOLS_FILE = '''
def lookup(city: str, year: int = 2024) -> str:
    """Population of a city in a year.

    Longer text the schema leaves out."""
    return f"{city}:{year}"


def untyped(city):
    """No annotation."""
    return city


def nodoc(city: str) -> str:
    return city


def listy(cities: list) -> str:
    """A list argument."""
    return ""


def star(**kw) -> str:
    """Anything."""
    return ""


def returns_int(x: int) -> int:
    """Not a string."""
    return x
'''


@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "my_tools.py"
    path.write_text(TOOLS_FILE)
    return path


def test_a_file_tool_resolves_with_its_schema(tools_file):
    (tool,) = resolve_tools([f"{tools_file}:lookup"])
    assert tool.schema() == {"type": "function", "function": {
        "name": "lookup", "description": "Population of a city in a year.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
                       "required": ["city"]}}}
    assert tool.fn(**tool.bind({"city": "Oslo", "year": "1990"})) == "Oslo:1990"


@pytest.mark.parametrize("fn, words", [
    ("untyped", "argument 'city' of untyped has no annotation; annotate it as str, int, float or bool"),
    ("nodoc", "nodoc has no docstring"),
    ("listy", "argument 'cities' of listy has <class 'list'>"),
    ("star", "star takes **kw"),
    ("returns_int", "returns_int is annotated to return <class 'int'>"),
    ("lokup", "did you mean 'lookup'"),
])
def test_bad_tools_are_refused_naming_the_spec_and_the_fix(tools_file, fn, words):
    with pytest.raises(ToolSpecError) as e:
        resolve_tools([f"{tools_file}:{fn}"])
    assert words in str(e.value) and f"{tools_file}:{fn}" in str(e.value)


def test_unknown_builtins_and_duplicate_names_are_refused(tools_file):
    with pytest.raises(ToolSpecError, match="'calculater': not a built-in \\(calculator, python, search\\)"):
        resolve_tools(["calculater"])
    with pytest.raises(ToolSpecError, match="both named 'calculator'"):
        resolve_tools(["calculator", "rollout.tools:calculator"])


def test_json_format_finds_the_first_call_and_binds_its_arguments(tools_file):
    tools = resolve_tools(["calculator", f"{tools_file}:lookup"])
    text = ('Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>'
            ' and later <tool_call>{"name": "lookup", "arguments": {"city": "Oslo"}}</tool_call>')
    call = parse_call(text, "json", tools)
    assert (call.name, call.arguments) == ("calculator", {"expression": "12*7"})
    assert text[:call.end].endswith("</tool_call>") and text[call.end:].startswith(" and later")
    stringly = '<tool_call>{"name": "lookup", "arguments": "{\\"city\\": \\"Oslo\\", \\"year\\": 2000}"}</tool_call>'
    assert parse_call(stringly, "json", tools).arguments == {"city": "Oslo", "year": 2000}
    assert parse_call("The answer is 84.", "json", tools) is None
    assert parse_call('<tool_call>{"name": "calculator"', "json", tools) is None  # not closed: no call yet
    assert stop_strings("json", tools) == ["</tool_call>"]


@pytest.mark.parametrize("text, words", [
    ('<tool_call>{"name": calculator}</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', "there is no tool 'search'; the tools are "
                                                                     "calculator, lookup"),
    ('<tool_call>{"name": "lookup", "arguments": {"town": "Oslo"}}</tool_call>', "takes no argument 'town'"),
    ('<tool_call>{"name": "lookup", "arguments": {}}</tool_call>', "needs the argument 'city'"),
    ('<tool_call>{"name": "lookup", "arguments": {"city": "Oslo", "year": "soon"}}</tool_call>',
     "'year' must be an integer, got 'soon'"),
    ('<tool_call>["calculator"]</tool_call>', 'a tool call is {"name"'),
])
def test_a_call_that_cannot_run_is_an_error_the_model_reads(tools_file, text, words):
    tools = resolve_tools(["calculator", f"{tools_file}:lookup"])
    with pytest.raises(ToolCallError, match=words.replace("(", "\\(").replace("[", "\\[")):
        parse_call(text, "json", tools)


def test_arguments_of_the_wrong_type_are_refused_not_cast():
    def rate(x: float, on: bool) -> str:
        """A number and a flag."""
        return f"{x}:{on}"

    from rollout.tools import _check

    tool = _check("inline:rate", rate, {})
    assert tool.bind({"x": "2.5", "on": "true"}) == {"x": 2.5, "on": True}
    assert tool.bind({"x": 3, "on": False}) == {"x": 3.0, "on": False}
    for bad in ({"x": True, "on": True}, {"x": [1], "on": True}, {"x": 1.0, "on": 1}):
        with pytest.raises(ToolCallError, match="must be a"):
            tool.bind(bad)


def test_tag_format_takes_the_text_between_the_tags_as_the_one_argument(tools_file):
    tools = resolve_tools(["calculator", f"{tools_file}:lookup"])
    call = parse_call("first <calculator> 3 + 4*5 </calculator> then", "tag", tools)
    assert (call.name, call.arguments) == ("calculator", {"expression": "3 + 4*5"})
    assert parse_call("no call <calculator>1+1", "tag", tools) is None
    assert stop_strings("tag", tools) == ["</calculator>", "</lookup>"]
    with pytest.raises(ToolCallError, match="lookup takes 2 arguments; the tag format carries one"):
        parse_call("<lookup>Oslo</lookup>", "tag", tools)
    with pytest.raises(ValueError, match="tool-call format 'xml'"):
        parse_call("", "xml", tools)


@pytest.mark.parametrize("expr, out", [("12*7", "84"), ("2**10 - 1", "1023"), ("7/2", "3.5"), ("-(3+4)//2", "-4"),
                                       ("10 % 4", "2"), ("1/3", "0.3333333333"), ("6/3", "2")])
def test_calculator(expr, out):
    assert calculator(expr) == out


@pytest.mark.parametrize("expr, words", [
    ("__import__('os').system('id')", "is not a number or an arithmetic operation"),
    ("x + 1", "'x' is not a number"), ("1/0", "division by zero"), ("9**99**99", "exponent"),
    ("10**100 * 10**100 * 10**100 * 10**100", "more than 300 digits"), ("1e200**2", "too large"),
    ("2 +", "not an arithmetic expression"), ("'a' * 3", "is not a number"),
])
def test_calculator_refuses_anything_but_bounded_arithmetic(expr, words):
    assert calculator(expr).startswith("error:") and words in calculator(expr)


# -- built-ins that run code or read files --------------------------------------------------------------------
def test_python_tool_returns_what_the_code_prints_and_the_error_it_raised():
    from rollout.tools import python

    assert python("print(sum(range(10)))") == "45"
    assert python("x = 1") == "(no output: print() what you want to see)"
    assert python("print('a')\n1/0") == "a\nerror: ZeroDivisionError: division by zero"


CORPUS = [{"title": "Oslo", "text": "Oslo is the capital of Norway, on the Oslofjord."},
          {"title": "Bergen", "text": "Bergen is a city on the west coast of Norway, known for rain."},
          {"title": "Lima", "text": "Lima is the capital of Peru."}]


@pytest.fixture
def corpus(tmp_path):
    import json

    path = tmp_path / "passages.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CORPUS))
    return path


def test_search_ranks_passages_by_bm25_and_binds_its_corpus(corpus):
    from rollout.search import search

    (tool,) = resolve_tools([{"fn": "search", "args": {"corpus": str(corpus), "k": 2}}])
    assert list(tool.parameters) == ["query"]  # the corpus and k are bound: the model passes the query only
    assert tool.pool_spec()["files"] == [str(corpus)]
    out = search("capital of Peru", corpus=str(corpus), k=2)
    assert out.splitlines()[0] == "[1] Lima: Lima is the capital of Peru."
    assert search("the of", corpus=str(corpus)) == "no results: the query has no searchable words"
    assert search("quantum chromodynamics", corpus=str(corpus)) == "no results"


def test_search_refuses_a_missing_or_bad_corpus_at_start_up(tmp_path):
    with pytest.raises(ToolSpecError, match="search needs args.corpus, like"):
        resolve_tools(["search"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"title": "no text"}\n')
    from rollout.search import CorpusError, load_corpus

    with pytest.raises(CorpusError, match="line 2 has no non-empty"):
        load_corpus(str(bad))


# -- the sandboxed runner ----------------------------------------------------------------------------------------
RUNNER_TOOLS = '''
import os
import time


def slow(seconds: float) -> str:
    """Sleeps."""
    time.sleep(seconds)
    return "done"


def crash(code: int) -> str:
    """Dies without a word."""
    os._exit(code)


def notstr(x: str) -> str:
    """Returns an int despite its annotation."""
    return 7


def big(n: int) -> str:
    """A long observation."""
    return "x" * n
'''


def test_runner_outcomes_ok_error_timeout_and_cut(tmp_path, corpus):
    from rollout.tool_runner import ToolRunner
    from rollout.tools import ToolCall

    path = tmp_path / "runner_tools.py"
    path.write_text(RUNNER_TOOLS)
    tools = resolve_tools(["calculator", "python", {"fn": "search", "args": {"corpus": str(corpus)}},
                           *(f"{path}:{fn}" for fn in ("slow", "crash", "notstr", "big"))])
    calls = [ToolCall("calculator", {"expression": "6*7"}, 0), ToolCall("python", {"code": "print(2**10)"}, 0),
             ToolCall("search", {"query": "Norway rain"}, 0), ToolCall("slow", {"seconds": 60.0}, 0),
             ToolCall("crash", {"code": 3}, 0), ToolCall("notstr", {"x": "a"}, 0), ToolCall("big", {"n": 50}, 0)]
    with ToolRunner(tools, timeout_s=2.0, num_workers=2, sandbox="off", max_chars=20) as runner:
        results = runner.run(calls)
        counts = dict(runner.counts)
    assert [r.status for r in results] == ["ok", "ok", "ok", "timeout", "error", "error", "ok"]
    assert results[0].text == "42" and results[1].text == "1024"
    assert results[2].text.startswith("[1] Bergen:")
    assert "deadline" in results[3].text and results[4].text.startswith("error: crash failed")
    assert "str" in results[5].text
    assert results[6].text == "x" * 20 + "\n[... 30 more characters cut]"
    assert counts == {"calls": 7, "ok": 4, "error": 2, "timeout": 1}


# -- what the prompt tells the model ---------------------------------------------------------------------------
TOOL_TEMPLATE = ("{% if tools %}<|system|>TOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
                 "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def test_tools_go_to_a_template_that_renders_them_and_to_the_system_prompt_otherwise(tiny_model_dir):
    from transformers import AutoTokenizer

    from rollout.data import render_prompt
    from rollout.tools import tool_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tools = resolve_tools(["calculator"])
    plain = tool_prompt(tok, "json", tools)  # the tiny template ignores tools: instructions instead
    assert plain.schemas is None and "<tool_call>" in plain.instructions
    text = render_prompt(tok, "What is 6*7?", chat_template=True, system_prompt="Be brief.", tools=plain)
    assert text == f"<|system|>Be brief.\n\n{plain.instructions}\n<|user|>What is 6*7?\n<|assistant|>"
    msgs = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    assert render_prompt(tok, msgs, chat_template=True, system_prompt=None, tools=plain).startswith(
        f"<|system|>Mine.\n\n{plain.instructions}\n")
    assert render_prompt(tok, "Q", chat_template=False, system_prompt=None, tools=plain) == f"{plain.instructions}\n\nQ"
    tok.chat_template = TOOL_TEMPLATE
    own = tool_prompt(tok, "json", tools)
    assert own.schemas == [tools[0].schema()] and own.instructions is None
    assert render_prompt(tok, "Q", chat_template=True, system_prompt=None, tools=own).startswith(
        "<|system|>TOOLS: calculator<|user|>Q")
    tag = tool_prompt(tok, "tag", tools)  # the tag format is never a template's
    assert tag.schemas is None and "<calculator>expression</calculator>" in tag.instructions


# -- configuration ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, words", [
    (["rollout.tool_format=xml"], "rollout.tool_format='xml': use `json` or `tag`"),
    (["rollout.max_turns=0"], "rollout.max_turns=0: must be >= 1"),
    (["rollout.tool_response_template=<r></r>"], "it must contain {observation}"),
])
def test_bad_tool_settings_fail_at_config_load(tmp_path, overrides, words):
    from launch.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=words.replace("(", "\\(").replace("{", "\\{").replace("}", "\\}")):
        load_config("configs/debug_cpu.yaml", [f"trainer.output_dir={tmp_path}", *overrides])


def test_bad_tool_specs_fail_before_any_model_loads(tmp_path, tools_file):
    from launch.config import ConfigError, load_config
    from launch.prepare import check_tools

    def check(*overrides):
        return check_tools(load_config("configs/debug_cpu.yaml", [f"trainer.output_dir={tmp_path}", *overrides]))

    with pytest.raises(ConfigError, match="'calculater': not a built-in"):
        check("rollout.tools=[calculater]")
    with pytest.raises(ConfigError, match="lookup takes 2 arguments \\(city, year\\) but rollout.tool_format=tag"):
        check(f"rollout.tools=[{tools_file}:lookup]", "rollout.tool_format=tag")
    assert [t.name for t in check(f"rollout.tools=[calculator, {tools_file}:lookup]")] == ["calculator", "lookup"]
    assert check() == []
