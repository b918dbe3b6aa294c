"""Data and reward functions of other systems, unchanged: verl parquet + compute_score, TRL standard and
conversational JSONL + batch reward functions, OpenRLHF reward_func; all checked at start-up by
`launch.prepare.prepare` (real tokenizer with a chat template, real sandboxed reward workers)."""

from __future__ import annotations

import json
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch.config import ConfigError, load_config
from launch.prepare import prepare
from reward import RewardRunner
from rollout.data import DataError, load_rows

VERL_ROWS = [  # what verl's examples/data_preprocess/gsm8k.py writes
    {"data_source": "openai/gsm8k",
     "prompt": [{"role": "user", "content": f"What is {i} + 1? Let's think step by step and output the final "
                                            "answer after \"####\"."}],
     "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
     "extra_info": {"split": "train", "index": i, "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}",
                    "question": f"What is {i} + 1?"}}
    for i in range(4)
]

VERL_SCORE = '''
import re

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's reward_score/gsm8k.py shape: the number after '####' against the ground truth."""
    assert data_source == "openai/gsm8k" and extra_info["split"] == "train"
    match = re.search(r"#### (\\-?[0-9\\.\\,]+)", solution_str)
    if match is None:
        return 0.0
    return 1.0 if match.group(1) == ground_truth else 0.0

def compute_score_dict(data_source, solution_str, ground_truth, extra_info=None):
    ok = ground_truth in solution_str
    return {"score": float(ok), "acc": ok, "pred": solution_str[-10:]}
'''

TRL_REWARDS = '''
def accuracy_reward(completions, solution, **kwargs):
    """TRL docs: conversational completions are lists of messages."""
    contents = [completion[0]["content"] for completion in completions]
    return [1.0 if s in c else 0.0 for c, s in zip(contents, solution)]

def prompt_aware(prompts, completions, **kwargs):
    assert isinstance(prompts[0], list) and prompts[0][-1]["role"] == "user"
    assert kwargs["completion_ids"] and isinstance(kwargs["completion_ids"][0], list)
    return [float(len(c[0]["content"]) < 50) for c in completions]

def reward_len(completions, **kwargs):
    """TRL docs, standard format: completions are strings."""
    return [-abs(20 - len(completion)) for completion in completions]

def not_applicable(completions, **kwargs):
    return [None for _ in completions]

def scalar_by_mistake(completions, **kwargs):
    return 1.0
'''

OPENRLHF_REWARD = '''
import torch

def reward_func(queries, prompts, labels):
    """OpenRLHF --remote_rm_url file.py: queries are prompt + response."""
    assert queries[0].startswith(prompts[0])
    return torch.tensor([float(labels[0] in q[len(p):]) for q, p in zip(queries, prompts)])

def reward_func_dict(queries, prompts, labels, **kwargs):
    r = torch.tensor([1.0])
    return {"rewards": r, "scores": r, "extra_logs": {"dummy": torch.tensor([0.5])}}
'''


@pytest.fixture()
def verl_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(VERL_ROWS), path)
    return path


@pytest.fixture()
def trl_conversational(tmp_path):
    path = tmp_path / "conv.jsonl"
    rows = [{"prompt": [{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": f"What is {i} + 2?"}], "solution": str(i + 2)} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture()
def reward_files(tmp_path):
    for name, text in (("verl_score.py", VERL_SCORE), ("trl_rewards.py", TRL_REWARDS),
                       ("orl_reward.py", OPENRLHF_REWARD)):
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def _cfg(tiny_model_dir, tmp_path, *overrides):
    return load_config(None, [f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path}/out", *overrides])


def test_verl_parquet_needs_no_data_keys(verl_parquet):
    rows = load_rows(str(verl_parquet), prompt_key="prompt", answer_key="answer")
    assert rows[1]["answer"] == "2" and rows[1]["prompt"] == VERL_ROWS[1]["prompt"]
    assert rows[1]["extra_info"] == VERL_ROWS[1]["extra_info"] and rows[1]["ability"] == "math"


def test_dotted_answer_key_and_its_errors(tmp_path, verl_parquet):
    rows = load_rows(str(verl_parquet), prompt_key="prompt", answer_key="extra_info.index")
    assert [r["answer"] for r in rows] == ["0", "1", "2", "3"]
    with pytest.raises(DataError, match=r"`reward_model` is an object with keys \['ground_truth', 'style'\].*"
                                        r"data.answer_key=reward_model.ground_truth"):
        load_rows(str(verl_parquet), prompt_key="prompt", answer_key="reward_model")
    with pytest.raises(DataError, match=r"no row has the column `solution`"):
        load_rows(str(verl_parquet), prompt_key="prompt", answer_key="solution")


def test_chat_messages_render_with_the_template_and_keep_the_system_message(tiny_model_dir, tmp_path,
                                                                             trl_conversational):
    prep = prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={trl_conversational}", "reward.fns=[format]"))
    text = prep.train_rows[0]["prompt_text"]
    assert "Answer briefly." in text and "What is 0 + 2?" in text and "[{" not in text
    assert prep.train_rows[0]["fields"]["solution"] == "2" and "answer" not in prep.train_rows[0]["fields"]
    assert prep.eval_rows == []  # data.eval: auto means no eval on a user's own data


def test_verl_run_with_verl_reward_starts(tiny_model_dir, tmp_path, verl_parquet, reward_files):
    prep = prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={verl_parquet}",
                        f"reward.fns=[{reward_files}/verl_score.py:compute_score,"
                        f"{reward_files}/verl_score.py:compute_score_dict]"))
    assert prep.reward_names == ("compute_score", "compute_score_dict")
    assert len(prep.train_rows) == 4


def test_verl_reward_scores_through_the_runner(reward_files):
    row = {**VERL_ROWS[0], "prompt": "rendered", "answer": "1"}
    specs = [f"{reward_files}/verl_score.py:compute_score", f"{reward_files}/verl_score.py:compute_score_dict"]
    with RewardRunner(specs, num_workers=1) as runner:
        good, bad = runner.score([{**row, "completion": "so #### 1"}, {**row, "completion": "#### 7"}])
    assert good.status == "ok" and good.metrics == {"compute_score": 1.0, "compute_score_dict": 1.0,
                                                    "compute_score_dict/acc": 1.0}
    assert bad.reward == 0.0 and bad.metrics["compute_score_dict/acc"] == 0.0


def test_trl_functions_get_messages_lists_and_columns(reward_files):
    from reward.registry import COMPLETION_IDS, SOURCE_PROMPT

    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    row = {"prompt": "<rendered>", SOURCE_PROMPT: messages, COMPLETION_IDS: [5, 6], "solution": "3",
           "completion": "It is 3."}
    specs = [f"{reward_files}/trl_rewards.py:{n}" for n in ("accuracy_reward", "prompt_aware", "not_applicable")]
    with RewardRunner(specs, num_workers=1) as runner:
        (res,) = runner.score([row])
    assert res.status == "ok", res.error
    assert res.metrics == {"accuracy_reward": 1.0, "prompt_aware": 1.0, "not_applicable": 0.0}


def test_trl_standard_format_gets_strings(tiny_model_dir, tmp_path, reward_files):
    data = tmp_path / "std.jsonl"
    data.write_text(json.dumps({"prompt": "The sky is"}) + "\n")
    prep = prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={data}",
                        f"reward.fns=[{reward_files}/trl_rewards.py:reward_len]"))
    assert prep.reward_names == ("reward_len",)


def test_openrlhf_reward_func(reward_files):
    row = {"prompt": "Q: 2+2? A:", "completion": " 4", "answer": "4"}
    specs = [f"{reward_files}/orl_reward.py:reward_func", f"{reward_files}/orl_reward.py:reward_func_dict"]
    with RewardRunner(specs, num_workers=1) as runner:
        (res,) = runner.score([row])
    assert res.status == "ok", res.error
    assert res.metrics == {"reward_func": 1.0, "reward_func_dict": 1.0, "reward_func_dict/score": 1.0,
                           "reward_func_dict/dummy": 0.5}


def test_wrong_binding_fails_at_startup_with_the_reason(tiny_model_dir, tmp_path, verl_parquet, reward_files):
    # TRL's accuracy_reward needs a `solution` column that a verl file does not have
    with pytest.raises(ConfigError, match=r"accuracy_reward .*trl convention.* failed on data.train=.* row 0: "
                                          r"error: .*needs column\(s\) \['solution'\]"):
        prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={verl_parquet}",
                     f"reward.fns=[{reward_files}/trl_rewards.py:accuracy_reward]"))
    with pytest.raises(ConfigError, match=r"scalar_by_mistake .*returned float, but a TRL-style reward function "
                                          r"returns a list"):
        prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={verl_parquet}",
                     f"reward.fns=[{reward_files}/trl_rewards.py:scalar_by_mistake]"))


def test_a_raising_reward_names_its_line(tiny_model_dir, tmp_path, jsonl_dataset):
    (tmp_path / "broken.py").write_text("def r(prompt, completion, **kw):\n    return 1 / 0\n")
    with pytest.raises(ConfigError, match=r"broken.py:2\)"):
        prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={jsonl_dataset}", "data.prompt_key=question",
                     f"reward.fns=[{tmp_path}/broken.py:r]"))


def test_routing_by_data_source(tiny_model_dir, tmp_path, reward_files):
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (
        {"prompt": "What is 1 + 1?", "answer": "2", "data_source": "arith"},
        {"prompt": "Say hi in tags", "data_source": "fmt"})) + "\n")
    routed = ["reward.fns=[{fn: arith, data_sources: [arith]}, {fn: format, data_sources: [fmt]}]"]
    prep = prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={data}", *routed))
    assert prep.reward_names == ("arith", "format")
    with RewardRunner([{"fn": "arith", "data_sources": ["arith"]}, {"fn": "format", "data_sources": ["fmt"]}],
                      num_workers=1) as runner:
        a, f = runner.score([{"prompt": "p", "completion": "2", "answer": "2", "data_source": "arith"},
                             {"prompt": "p", "completion": "<think>x</think><answer>y</answer>",
                              "data_source": "fmt"}])
    assert set(a.metrics) == {"arith", "arith/acc"} and a.reward == 1.0
    assert set(f.metrics) == {"format"} and f.reward == 1.0
    with pytest.raises(ConfigError, match=r"no function scores the data.train rows with data_source \['fmt'\]"):
        prepare(_cfg(tiny_model_dir, tmp_path, f"data.train={data}",
                     "reward.fns=[{fn: arith, data_sources: [arith]}]"))


def test_per_function_timeout_and_options(tmp_path):
    (tmp_path / "slow.py").write_text("import time\ndef slow(prompt, completion, *, delay=0.0, **kw):\n"
                                      "    time.sleep(delay)\n    return 1.0\n")
    specs = [{"fn": f"{tmp_path}/slow.py:slow", "name": "quick", "timeout_s": 30, "args": {"delay": 0.0}},
             {"fn": f"{tmp_path}/slow.py:slow", "name": "stuck", "timeout_s": 1, "args": {"delay": 30}}]
    with RewardRunner(specs, timeout_s=60, num_workers=2) as runner:
        (res,) = runner.score([{"prompt": "p", "completion": "c"}])
    assert res.status == "timeout" and res.metrics == {"quick": 1.0}
    assert "stuck: call ran past the 1 s deadline" in res.error
