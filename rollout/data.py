"""Prompt data: the built-in `arith` task, local JSONL/JSON/parquet files (one, a list, or globs),
`datasets` hub names; prompt rendering with the chat template; a resumable, seeded prompt iterator.

Rows are plain dicts and keep every column of the source, which reaches reward functions by name.
Two columns are normalised when the data is loaded, before any model is:

- `prompt`, read from `data.prompt_key`: a non-empty string, or a list of chat messages
  (`[{"role": "system"|"user"|..., "content": str}, ...]`, as in verl and TRL's conversational
  format), rendered later with the tokenizer's chat template, system messages kept.
- `answer`, read from `data.answer_key` (a dotted key reads into nested objects:
  `reward_model.ground_truth`): a scalar, stored as a string. The column is optional: with the
  default key `answer` absent from a source, rows have no `answer` (code tasks, TRL datasets whose
  reward functions read their own columns); a verl-format row (`reward_model.ground_truth`) gives
  its ground truth. A key set to anything else must be in some row of each source; rows without
  it (a task without answers in mixed data) are counted in a warning.

Every problem is a `DataError` of one line naming the file (or hub name), the row and the fix.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ARITH_SEEDS = {"train": 1_000_003, "eval": 2_000_003}
DEFAULT_ANSWER_KEY = "answer"
VERL_ANSWER_KEY = "reward_model.ground_truth"
"""Where a verl-format row (data_source, prompt, ability, reward_model, extra_info) keeps its answer."""
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_FILE_TYPES = (".jsonl", ".json", ".parquet")
_MISSING = object()


class DataError(ValueError):
    pass


def make_arith(n: int, *, num_terms: int = 3, max_operand: int = 9, split: str = "train",
               exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """`n` prompts "What is a + b + c?" with exact integer answers; `split` picks the seed and
    `exclude` holds questions never to produce (the held-out set, when generating train).

    >>> make_arith(1, split="eval")[0]["answer"].isdigit()
    True
    """
    rng = random.Random(ARITH_SEEDS[split])
    exclude = exclude or set()
    rows, seen = [], set()
    space = (max_operand + 1) ** num_terms - len(exclude)
    if space <= 0:
        raise DataError("data.arith: every question is excluded; raise max_operand or num_terms")
    while len(rows) < n:
        terms = [rng.randint(0, max_operand) for _ in range(num_terms)]
        question = "What is " + " + ".join(map(str, terms)) + "?"
        # never a held-out question; distinct questions until the space is used up, then repeats
        if question in exclude or (question in seen and len(seen) < space):
            continue
        seen.add(question)
        rows.append({"prompt": question, "answer": str(sum(terms)), "data_source": "arith"})
    return rows


def load_rows(source: str | list[str], *, prompt_key: str, answer_key: str | None, split: str = "train",
              arith: Any = None, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Rows of `source` (one source or a list; a local path may be a glob) with `prompt` and, where
    the source has one, `answer` normalised (other columns kept as they are)."""
    sources = expand_sources(source, split)
    if sources == ["arith"]:
        size = arith.train_size if split == "train" else arith.eval_size
        return make_arith(size, num_terms=arith.num_terms, max_operand=arith.max_operand, split=split,
                          exclude=exclude)
    rows: list[dict[str, Any]] = []
    for where in sources:
        if where == "arith":
            raise DataError(f"data.{split}: `arith` (the built-in task) cannot be mixed with files; give it alone")
        raw = _read_source(where, split)
        if not raw:
            raise DataError(f"data.{split}: {where} has no rows")
        answer_col = _answer_column(raw, where, answer_key)
        normalised = [_normalise(row, i, where, prompt_key, answer_col) for i, row in enumerate(raw)]
        lacking = sum("answer" not in r for r in normalised)
        if answer_col is not None and lacking:
            log.warning("%s: %d of %d rows have no `%s` (reward functions that need `answer` fail on them)",
                        where, lacking, len(raw), answer_col)
        rows += normalised
    return rows


def expand_sources(source: str | list[str], split: str) -> list[str]:
    """`source` as a list of single sources: globs expanded (sorted), each checked to name something."""
    items = [source] if isinstance(source, str) else list(source)
    if not items or not all(isinstance(s, str) and s.strip() for s in items):
        raise DataError(f"data.{split}={source!r}: give a file, a glob, a hub name, `arith`, or a list of these")
    out: list[str] = []
    for item in items:
        if glob.has_magic(item):
            matches = sorted(glob.glob(str(Path(item).expanduser()), recursive=True))
            files = [m for m in matches if Path(m).suffix in _FILE_TYPES]
            if not files:
                raise DataError(f"data.{split}={item}: the pattern matches no .jsonl/.json/.parquet file")
            out += files
        else:
            out.append(item)
    return out


def _read_source(source: str, split: str) -> list[dict]:
    if source == "arith":
        return []
    path = Path(source).expanduser()
    if path.suffix in _FILE_TYPES:
        if not path.is_file():
            raise DataError(f"data.{split}={source}: file not found; give a .jsonl/.json/.parquet path, a glob or "
                            "`arith`")
        return _read_file(path)
    if path.is_dir():  # a dataset repository on disk (README.md configs, data files): read by `datasets`
        return _read_hub(str(path), split)
    if path.exists():
        raise DataError(f"data.{split}={source}: unsupported file type; use .jsonl, .json or .parquet")
    return _read_hub(source, split)


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable parquet file ({_one_line(e)}); rewrite it, e.g. with "
                            "pandas.DataFrame.to_parquet") from None
    data = path.read_bytes()
    if path.suffix == ".json":
        text = _decode(data, path, 1)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json dataset is one list of "
                            "objects (or use .jsonl)") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json dataset must be a list of objects (or use .jsonl)")
        return rows
    rows = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(_decode(line, path, lineno)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
    return rows


def _decode(data: bytes, path: Path, lineno: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = lineno + data.count(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); re-encode the file as UTF-8, e.g. "
                        f"iconv -f latin1 -t utf-8") from None


def parse_hub_name(name: str, split: str) -> tuple[str, str | None, str]:
    """(path, config name, split) of `name`, `name:split` or `name:config:split`; the split defaults to
    `train` for data.train and `test` for data.eval.

    >>> parse_hub_name("openai/gsm8k:main:train", "train")
    ('openai/gsm8k', 'main', 'train')
    >>> parse_hub_name("openai/gsm8k", "eval")
    ('openai/gsm8k', None, 'test')
    """
    parts = name.split(":")
    default_split = "train" if split == "train" else "test"
    if len(parts) == 1:
        return name, None, default_split
    if len(parts) == 2:
        return parts[0], None, parts[1] or default_split
    if len(parts) == 3:
        return parts[0], parts[1] or None, parts[2] or default_split
    raise DataError(f"data.{split}={name}: a hub dataset is `name`, `name:split` or `name:config:split`")


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    path, config, hub_split = parse_hub_name(name, split)
    shown = ":".join(p for p in (path, config, hub_split) if p)
    try:
        return list(datasets.load_dataset(path, config, split=hub_split))
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError...)
        raise DataError(
            f"data.{split}={name}: not a local file and the dataset {shown} could not be loaded ({type(e).__name__}: "
            f"{_one_line(e)}); give a .jsonl/.json/.parquet path or glob, `arith`, or a reachable hub "
            "name[:config]:split"
        ) from None


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def get_column(row: dict, key: str) -> Any:
    """`row[key]`, or for a dotted key the value inside nested objects (`reward_model.ground_truth`);
    a column whose own name has a dot wins. `_MISSING` when absent."""
    if key in row:
        return row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _answer_column(rows: list, source: str, answer_key: str | None) -> str | None:
    """The key that holds this source's answers, None when it has none (see the module docstring)."""
    if answer_key is None:
        return None
    if any(isinstance(r, dict) and get_column(r, answer_key) is not _MISSING for r in rows):
        return answer_key
    if answer_key != DEFAULT_ANSWER_KEY:
        first = rows[0] if isinstance(rows[0], dict) else {}
        raise DataError(f"{source}: no row has the column `{answer_key}` (data.answer_key; columns: "
                        f"{_columns(first)}); set data.answer_key to one of them, or to null for no answer column")
    if isinstance(rows[0], dict) and get_column(rows[0], VERL_ANSWER_KEY) is not _MISSING:
        log.info("%s: verl format; the answer is reward_model.ground_truth", source)
        return VERL_ANSWER_KEY
    return None


def _columns(row: dict) -> list[str]:
    out = []
    for k, v in row.items():
        out += [f"{k}.{sub}" for sub in v] if isinstance(v, dict) and v else [k]
    return sorted(map(str, out))


def _normalise(row: Any, index: int, source: str, prompt_key: str, answer_key: str | None) -> dict:
    where = f"{source}: row {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where} is {type(row).__name__}, expected an object with `{prompt_key}`")
    prompt = get_column(row, prompt_key)
    if prompt is _MISSING or prompt is None:
        hint = " (a TRL `messages` dataset is for SFT; GRPO takes a `prompt` column)" if "messages" in row else ""
        raise DataError(f"{where} has no `{prompt_key}` column (columns: {_columns(row)}); set data.prompt_key=<column> "
                        f"or fix the row{hint}")
    out = dict(row)
    out["prompt"] = _check_prompt(prompt, where, prompt_key)
    if answer_key is not None:
        answer = get_column(row, answer_key)
        if answer is _MISSING or answer is None:
            return out  # a row of a task without answers (mixed data, routed rewards); load_rows counts them
        if isinstance(answer, dict):
            keys = sorted(map(str, answer))
            raise DataError(f"{where}: `{answer_key}` is an object with keys {keys}, not an answer; name the field "
                            f"with a dotted key, e.g. data.answer_key={answer_key}.{keys[0] if keys else 'field'}")
        if isinstance(answer, (list, tuple)):
            raise DataError(f"{where}: `{answer_key}` is a list, not one answer; set data.answer_key to a scalar "
                            "column (or null: reward functions still get every column by name)")
        out["answer"] = str(answer)
    return out


def _check_prompt(prompt: Any, where: str, key: str) -> str | list[dict[str, str]]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{where} has an empty `{key}`; every prompt needs text (drop the row or fill it)")
        return prompt
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise DataError(f"{where}: `{key}` is an empty list of messages; drop the row or fill it")
        for j, m in enumerate(prompt):
            ok = (isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str))
            if not ok:
                raise DataError(f"{where}: message {j} of `{key}` is {repr(m)[:120]}; each message needs a `role` "
                                f"({', '.join(sorted(CHAT_ROLES))}) and a string `content`")
        if not any(m["role"] == "user" for m in prompt):
            raise DataError(f"{where}: `{key}` has no user message; a prompt needs one")
        return [dict(m) for m in prompt]
    raise DataError(f"{where}: `{key}` is {type(prompt).__name__}; a prompt is text or a list of chat messages")


def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list)


def render_prompt(tokenizer, prompt: str | list[dict[str, str]], *, chat_template: bool, system_prompt: str | None,
                  suffix: str = "", tools: Any = None) -> str:
    """The text the model sees. A string prompt gets `suffix` and, with the chat template on, becomes the
    user message after `system_prompt`; a message list is rendered as it is (`suffix` appended to its last
    user message, `system_prompt` added when it has no system message of its own).

    `tools` (rollout.tools.ToolPrompt, multi-turn rollouts): its schemas go to a chat template that renders
    tools; its instructions are added to the system message (after `system_prompt` or the row's own system
    message), or before the text of a prompt without a chat template."""
    schemas = getattr(tools, "schemas", None)
    note = getattr(tools, "instructions", None)
    kw = {"tools": schemas} if schemas else {}
    if isinstance(prompt, str):
        text = prompt + suffix
        if not chat_template or tokenizer.chat_template is None:
            return f"{note}\n\n{text}" if note else text
        system = "\n\n".join(p for p in (system_prompt, note) if p)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    if not chat_template:
        raise ValueError("is a list of chat messages but data.chat_template=false; turn the template on, or give "
                         "text prompts")
    if tokenizer.chat_template is None:
        raise ValueError("is a list of chat messages but the tokenizer has no chat template; use a chat model or "
                         "text prompts")
    messages = [dict(m) for m in prompt]
    if system_prompt:
        if any(m["role"] == "system" for m in messages):
            raise ValueError("has its own system message and data.system_prompt is set too; unset "
                             "data.system_prompt or drop the row's system message")
        messages.insert(0, {"role": "system", "content": system_prompt})
    if note:
        own = next((m for m in messages if m["role"] == "system"), None)
        if own is None:
            messages.insert(0, {"role": "system", "content": note})
        else:
            own["content"] = f"{own['content']}\n\n{note}"
    if suffix:
        last = max(j for j, m in enumerate(messages) if m["role"] == "user")
        messages[last]["content"] += suffix
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)


def encode_prompts(tokenizer, rows: list[dict], cfg, source: Any, tools: Any = None) -> list[dict]:
    """Render and tokenize every row once; adds `prompt_text` and `prompt_ids`. A prompt longer than
    `cfg.max_prompt_tokens` is an error naming the row, or, with `cfg.filter_overlong_prompts`, dropped
    (the count is logged; the caller sees it as the difference in length)."""
    shown = source if isinstance(source, str) else ",".join(map(str, source))
    filter_overlong = getattr(cfg, "filter_overlong_prompts", False)
    kept = []
    for i, row in enumerate(rows):
        try:
            text = render_prompt(tokenizer, row["prompt"], chat_template=cfg.chat_template,
                                 system_prompt=cfg.system_prompt, suffix=cfg.prompt_suffix, tools=tools)
        except ValueError as e:
            raise DataError(f"{shown}: row {i} {e}") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > cfg.max_prompt_tokens:
            if filter_overlong:
                continue
            raise DataError(
                f"{shown}: row {i} renders to {len(ids)} tokens > data.max_prompt_tokens={cfg.max_prompt_tokens}; "
                f"raise data.max_prompt_tokens, set data.filter_overlong_prompts=true, or drop the row"
            )
        row["prompt_text"], row["prompt_ids"] = text, ids
        kept.append(row)
    if len(kept) < len(rows):
        log.warning("%s: dropped %d of %d prompts longer than data.max_prompt_tokens=%d "
                    "(data.filter_overlong_prompts)", shown, len(rows) - len(kept), len(rows), cfg.max_prompt_tokens)
        if not kept:
            raise DataError(f"{shown}: every prompt is longer than data.max_prompt_tokens={cfg.max_prompt_tokens}; "
                            "raise it")
    return kept


class PromptIterator:
    """Epoch-wise shuffled batches of (prompt_id, row); its state is part of the checkpoint."""

    def __init__(self, num_rows: int, *, seed: int, shuffle: bool = True):
        if num_rows == 0:
            raise DataError("the training set is empty")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.num_rows))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_ids(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(n - len(out), self.num_rows - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "num_rows": self.num_rows, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["num_rows"] != self.num_rows:
            raise DataError(
                f"resume: the checkpoint was taken on {state['num_rows']} training rows, the data now has "
                f"{self.num_rows}; resume with the same data.train"
            )
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()
