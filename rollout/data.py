"""Prompt data: the built-in `arith` task, local JSONL/JSON/parquet files, `datasets` hub names;
prompt rendering with the chat template; a resumable, seeded prompt iterator.

Rows are plain dicts. Every row must carry the configured prompt and answer columns; a row that
lacks one is an error naming the file, the row and the column, raised when the data is loaded
(before any model is). All other columns travel with the sample to the reward functions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

ARITH_SEEDS = {"train": 1_000_003, "eval": 2_000_003}


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


def load_rows(source: str, *, prompt_key: str, answer_key: str, split: str = "train",
              arith: Any = None, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Rows of `source` normalised to carry `prompt` and `answer` keys (other columns kept)."""
    if source == "arith":
        size = arith.train_size if split == "train" else arith.eval_size
        return make_arith(size, num_terms=arith.num_terms, max_operand=arith.max_operand, split=split,
                          exclude=exclude)
    path = Path(source).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DataError(f"data.{split}={source}: file not found; give a .jsonl/.json/.parquet path or `arith`")
        raw = _read_file(path)
    elif path.exists():
        raise DataError(f"data.{split}={source}: unsupported file type; use .jsonl, .json or .parquet")
    else:
        raw = _read_hub(source, split)
    return [_normalise(row, i, source, prompt_key, answer_key) for i, row in enumerate(raw)]


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json dataset must be a list of objects (or use .jsonl)")
        return data
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); one JSON object per line") from None
    return rows


def _read_hub(name: str, split: str) -> list[dict]:
    import datasets

    hub_split = "train" if split == "train" else "test"
    if ":" in name:
        name, hub_split = name.split(":", 1)
    try:
        return list(datasets.load_dataset(name, split=hub_split))
    except Exception as e:
        raise DataError(
            f"data.{split}={name}: not a local file and the hub dataset could not be loaded ({type(e).__name__}: {e}). "
            f"Give a .jsonl/.parquet path, `arith`, or a reachable hub name[:split]"
        ) from None


def _normalise(row: Any, index: int, source: str, prompt_key: str, answer_key: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{source}: row {index} is {type(row).__name__}, expected an object with `{prompt_key}`")
    for key, cfg_key in ((prompt_key, "data.prompt_key"), (answer_key, "data.answer_key")):
        if key not in row or row[key] is None:
            raise DataError(
                f"{source}: row {index} has no `{key}` column (columns: {sorted(row)}); "
                f"set {cfg_key}=<column> or fix the row"
            )
    if not str(row[prompt_key]).strip():
        raise DataError(f"{source}: row {index} has an empty `{prompt_key}`; every prompt needs text (drop the row "
                        "or fill it)")
    out = dict(row)
    out["prompt"], out["answer"] = str(row[prompt_key]), str(row[answer_key])
    return out


def render_prompt(tokenizer, question: str, *, chat_template: bool, system_prompt: str | None,
                  suffix: str = "") -> str:
    text = question + suffix
    if not chat_template or tokenizer.chat_template is None:
        return text
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(tokenizer, rows: list[dict], cfg, source: str) -> list[dict]:
    """Render and tokenize every row once; adds `prompt_text` and `prompt_ids`, checks lengths."""
    for i, row in enumerate(rows):
        text = render_prompt(tokenizer, row["prompt"], chat_template=cfg.chat_template,
                             system_prompt=cfg.system_prompt, suffix=cfg.prompt_suffix)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > cfg.max_prompt_tokens:
            raise DataError(
                f"{source}: row {i} renders to {len(ids)} tokens > data.max_prompt_tokens={cfg.max_prompt_tokens}; "
                f"raise data.max_prompt_tokens or drop the row"
            )
        row["prompt_text"], row["prompt_ids"] = text, ids
    return rows


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
