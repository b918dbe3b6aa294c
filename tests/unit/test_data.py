"""Prompt data: arith generation, file loading with clear row errors, the resumable iterator."""

from __future__ import annotations

import json

import pytest

from launch.config import ArithConfig, DataConfig
from rollout.data import DataError, PromptIterator, encode_prompts, load_rows, make_arith


def test_arith_answers_are_exact_and_eval_is_held_out():
    ev = make_arith(200, split="eval")
    train = make_arith(2000, split="train", exclude={r["prompt"] for r in ev})
    for r in ev[:50] + train[:50]:
        terms = [int(x) for x in r["prompt"].removeprefix("What is ").removesuffix("?").split(" + ")]
        assert len(terms) == 3 and all(0 <= t <= 9 for t in terms)
        assert r["answer"] == str(sum(terms))
    assert not {r["prompt"] for r in ev} & {r["prompt"] for r in train}
    assert len({r["prompt"] for r in ev}) == 200  # distinct held-out questions


def test_arith_is_deterministic():
    assert make_arith(20, split="train") == make_arith(20, split="train")


def test_jsonl_rows_keep_extra_columns(jsonl_dataset):
    rows = load_rows(str(jsonl_dataset), prompt_key="question", answer_key="solution")
    assert rows[2]["prompt"] == "What is 2 + 1?" and rows[2]["answer"] == "3"
    assert rows[2]["data_source"] == "toy" and rows[2]["question"] == "What is 2 + 1?"


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "answer": 4}]), tmp_path / "d.parquet")
    rows = load_rows(str(tmp_path / "d.parquet"), prompt_key="prompt", answer_key="answer")
    assert rows == [{"prompt": "q", "answer": "4"}]


def test_missing_column_names_file_row_and_key(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "1"}) + "\n" + json.dumps({"question": "b"}) + "\n")
    with pytest.raises(DataError) as err:
        load_rows(str(path), prompt_key="prompt", answer_key="answer")
    msg = str(err.value)
    assert "d.jsonl" in msg and "row 1" in msg and "`prompt`" in msg and "data.prompt_key" in msg


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match=r"d.jsonl:2"):
        load_rows(str(path), prompt_key="prompt", answer_key="answer")


def test_missing_file():
    with pytest.raises(DataError, match="file not found"):
        load_rows("/nonexistent/train.jsonl", prompt_key="prompt", answer_key="answer")


def test_prompt_rendering_and_length_check(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = encode_prompts(tok, [{"prompt": "What is 1 + 2?", "answer": "3"}], DataConfig(prompt_suffix=" Go."), "x")
    assert rows[0]["prompt_text"] == "<|user|>What is 1 + 2? Go.\n<|assistant|>"
    assert tok.decode(rows[0]["prompt_ids"]) == rows[0]["prompt_text"]
    with pytest.raises(DataError, match="row 0 renders to .* data.max_prompt_tokens=5"):
        encode_prompts(tok, [{"prompt": "What is 1 + 2?", "answer": "3"}], DataConfig(max_prompt_tokens=5), "x")


def test_iterator_covers_each_epoch_and_resumes_exactly():
    it = PromptIterator(10, seed=3)
    first = it.next_ids(4) + it.next_ids(6)
    assert sorted(first) == list(range(10))
    state = it.state_dict()
    ahead = it.next_ids(7)
    again = PromptIterator(10, seed=3)
    again.load_state_dict(state)
    assert again.next_ids(7) == ahead
    assert it.epoch == 1


def test_iterator_refuses_a_different_dataset():
    state = PromptIterator(10, seed=0).state_dict()
    with pytest.raises(DataError, match="same data.train"):
        PromptIterator(11, seed=0).load_state_dict(state)


def test_arith_config_validation():
    from launch.config import ConfigError

    with pytest.raises(ConfigError):
        ArithConfig(num_terms=1)


def test_empty_prompt_is_an_error_naming_file_and_row(tmp_path):
    from rollout.data import DataError, load_rows

    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "  ", "answer": "3"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: row 1 has an empty `prompt`"):
        load_rows(str(path), prompt_key="prompt", answer_key="answer")
