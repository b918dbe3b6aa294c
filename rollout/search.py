"""The `search` built-in tool: BM25 (Robertson & Zaragoza 2009) over a local corpus file, with bm25s.

    rollout:
      tools: [{fn: search, args: {corpus: data/passages.jsonl, k: 3}}]

The corpus is a JSON Lines file with a "text" field per passage (and optionally "title"), or a text file with
one passage per non-empty line. The index is built once per worker process (in the tool worker's zygote, before
any call) and kept for every later call.
"""

from __future__ import annotations

import json
import os
from typing import Any

_INDEX: dict[str, tuple[Any, list[dict[str, str]]]] = {}
"""Corpus path -> (BM25 index, passages), built once per process."""


class CorpusError(ValueError):
    """The corpus file cannot be read as passages."""


def load_corpus(path: str) -> list[dict[str, str]]:
    """Passages {"text", "title"} of a .jsonl file (a "text" field per line) or a text file (one per line)."""
    if not os.path.isfile(path):
        raise CorpusError(f"search corpus {path!r}: no such file; set the search tool's args.corpus to a .jsonl "
                          "file with a \"text\" field per line, or a text file with one passage per line")
    passages = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"search corpus {path}: line {n} is not JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                    raise CorpusError(f"search corpus {path}: line {n} has no non-empty \"text\" string")
                passages.append({"text": row["text"].strip(), "title": str(row.get("title") or "")})
            else:
                passages.append({"text": line.strip(), "title": ""})
    if not passages:
        raise CorpusError(f"search corpus {path}: no passages")
    return passages


def _index(corpus: str):
    path = os.path.abspath(corpus)
    if path not in _INDEX:
        import bm25s

        passages = load_corpus(path)
        texts = [f"{p['title']} {p['text']}".strip() for p in passages]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        _INDEX[path] = (retriever, passages)
    return _INDEX[path]


def search(query: str, corpus: str = "", k: int = 3) -> str:
    """Search the reference passages for a query; returns the best matching passages."""
    import bm25s

    retriever, passages = _index(corpus)
    tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
    if not any(tokens.ids):
        return "no results: the query has no searchable words"
    k = max(1, min(int(k), len(passages)))
    docs, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    lines = []
    for rank, (d, sc) in enumerate(zip(docs[0].tolist(), scores[0].tolist()), 1):
        if sc <= 0:
            break
        p = passages[d]
        lines.append(f"[{rank}] {p['title'] + ': ' if p['title'] else ''}{p['text']}")
    return "\n".join(lines) if lines else "no results"


def _warmup(corpus: str = "") -> None:
    _index(corpus)


search.warmup = _warmup  # type: ignore[attr-defined]
search.needs_bound = ("corpus",)  # type: ignore[attr-defined]
search.needs_hint = "a .jsonl file with a \"text\" field per line, or a text file with one passage per line"  # type: ignore[attr-defined]
