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


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_file_lists_and_globs(tmp_path):
    for k in range(3):
        _write_jsonl(tmp_path / f"part-{k}.jsonl", [{"prompt": f"q{k}", "answer": k}])
    _write_jsonl(tmp_path / "other.jsonl", [{"prompt": "o", "answer": 9}])
    rows = load_rows([str(tmp_path / "part-*.jsonl"), str(tmp_path / "other.jsonl")], prompt_key="prompt",
                     answer_key="answer")
    assert [r["prompt"] for r in rows] == ["q0", "q1", "q2", "o"]
    with pytest.raises(DataError, match=r"the pattern matches no .jsonl/.json/.parquet file"):
        load_rows(str(tmp_path / "nothing-*.jsonl"), prompt_key="prompt", answer_key="answer")


def test_a_dataset_directory_with_a_config_name(tmp_path):
    """A `datasets` repository on disk, as on the hub: README.md names the configs and their files."""
    repo = tmp_path / "repo"
    (repo / "main").mkdir(parents=True)
    (repo / "socratic").mkdir()
    _write_jsonl(repo / "main" / "train.jsonl", [{"question": "main q", "answer": "1"}])
    _write_jsonl(repo / "socratic" / "train.jsonl", [{"question": "socratic q", "answer": "2"}])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train.jsonl\n"
        "- config_name: socratic\n  data_files:\n  - split: train\n    path: socratic/train.jsonl\n---\n")
    rows = load_rows(f"{repo}:socratic:train", prompt_key="question", answer_key="answer")
    assert [r["prompt"] for r in rows] == ["socratic q"]


def test_hub_typo_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_rows("no-such-org/no-such-dataset:main:train", prompt_key="prompt", answer_key="answer")
    msg = str(err.value)
    assert "\n" not in msg and "no-such-org/no-such-dataset:main:train" in msg


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 \(byte 0xe9\)"):
        load_rows(str(path), prompt_key="prompt", answer_key="answer")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable parquet file") as err:
        load_rows(str(path), prompt_key="prompt", answer_key="answer")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("prompt, fragment", [
    ([], "empty list of messages"),
    ([{"role": "user"}], "message 0 of `prompt`"),
    ([{"role": "wizard", "content": "x"}], "needs a `role`"),
    ([{"role": "system", "content": "x"}], "has no user message"),
    ({"text": "x"}, "is dict; a prompt is text or a list of chat messages"),
])
def test_bad_chat_messages(tmp_path, prompt, fragment):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "fine", "answer": "1"}, {"prompt": prompt, "answer": "1"}])
    with pytest.raises(DataError, match=rf"d.jsonl: row 1.*{fragment}"):
        load_rows(str(path), prompt_key="prompt", answer_key="answer")


def test_message_prompts_render_and_conflicts_are_errors(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 1 + 2?"}]
    (row,) = encode_prompts(tok, [{"prompt": messages}], DataConfig(prompt_suffix=" Go."), "x")
    assert row["prompt_text"] == tok.apply_chat_template(
        [messages[0], {"role": "user", "content": "What is 1 + 2? Go."}], tokenize=False, add_generation_prompt=True)
    assert "Be terse." in row["prompt_text"] and messages[1]["content"] == "What is 1 + 2?"  # the row is not changed
    with pytest.raises(DataError, match=r"x: row 0 has its own system message and data.system_prompt is set"):
        encode_prompts(tok, [{"prompt": messages}], DataConfig(system_prompt="Other."), "x")
    with pytest.raises(DataError, match=r"row 0 is a list of chat messages but data.chat_template=false"):
        encode_prompts(tok, [{"prompt": messages}], DataConfig(chat_template=False), "x")


def test_filter_overlong_prompts_drops_and_counts(tiny_model_dir, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "short"}, {"prompt": "a much longer prompt " * 20}, {"prompt": "also short"}]
    cfg = DataConfig(max_prompt_tokens=16, filter_overlong_prompts=True)
    with caplog.at_level("WARNING", logger="rollout.data"):
        kept = encode_prompts(tok, [dict(r) for r in rows], cfg, "x")
    assert [r["prompt"] for r in kept] == ["short", "also short"]
    assert "dropped 1 of 3 prompts" in caplog.text
    with pytest.raises(DataError, match=r"row 1 renders to \d+ tokens"):
        encode_prompts(tok, [dict(r) for r in rows], DataConfig(max_prompt_tokens=16), "x")


def test_answer_column_is_optional_only_under_its_default_name(tmp_path):
    path = _write_jsonl(tmp_path / "code.jsonl", [{"prompt": "write f", "tests": [{"input": "", "output": ""}]}])
    (row,) = load_rows(str(path), prompt_key="prompt", answer_key="answer")
    assert "answer" not in row and row["tests"] == [{"input": "", "output": ""}]
    (row,) = load_rows(str(path), prompt_key="prompt", answer_key=None)
    assert "answer" not in row


def test_data_eval_defaults_to_nothing_on_user_data():
    from launch.config import load_config

    assert load_config(None, []).data.eval == "arith"
    assert load_config(None, ["data.train=mine.jsonl"]).data.eval is None
    assert load_config(None, ["data.train=[a.jsonl,b.jsonl]", "data.eval=c.jsonl"]).data.eval == "c.jsonl"
