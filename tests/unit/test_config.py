"""Config schema: every recipe loads, every field is documented, overrides are checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from launch.config import Config, ConfigError, field_docs, key_docs, load_config, save_config, schema_keys
from launch.foreign_keys import FOREIGN_KEYS

CONFIGS = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "debug_cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipes_accept_the_contract_overrides(path, tmp_path):
    cfg = load_config(path, [f"trainer.output_dir={tmp_path}", "trainer.total_steps=3", "data.train=arith",
                             "data.eval=arith", "reward.fns=[arith]", "model.path=tiny-random"])
    assert (cfg.trainer.total_steps, cfg.model.path, cfg.reward.fns) == (3, "tiny-random", ["arith"])


def _sections(cls=Config):
    yield cls
    for f in dataclasses.fields(cls):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            yield from _sections(type(sub))


@pytest.mark.parametrize("cls", list(_sections()), ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_overrides_are_typed_and_merged():
    cfg = load_config("configs/debug_cpu.yaml", ["trainer.lr=3e-4", "rollout.stop=[a,b]", "data.eval=null"])
    assert cfg.trainer.lr == pytest.approx(3e-4)
    assert cfg.rollout.stop == ["a", "b"]
    assert cfg.data.eval is None
    assert cfg.model.path == "tiny-random"  # from the recipe
    assert cfg.trainer.weight_decay == 0.0  # from the schema


@pytest.mark.parametrize("override, words", [
    (["trainer.lrr=1"], ["trainer.lrr=1: unknown key; did you mean trainer.lr?"]),
    (["lr=1"], ["lr=1", "trainer.lr"]),
    (["rollout.group_sise=4"], ["rollout.group_size"]),
    (["trainer.lr=abc"], ["trainer.lr"]),
    (["trainer.zero_stage=5"], ["zero_stage", "0, 1, 2 or 3"]),
    (["algorithm.loss.eps_low=2"], ["eps_low"]),
    (["novalue"], ["dotted.key=value"]),
    (["reward.fns=[]"], ["reward.fns"]),
    (["reward.weights=[1.0,2.0]"], ["reward.weights"]),
])
def test_bad_overrides_name_the_key_and_the_fix(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("configs/debug_cpu.yaml", override)
    for w in words:
        assert w in str(err.value)


def test_unknown_key_in_a_recipe_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  total_step: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: trainer.total_step: unknown key; did you mean trainer.total_steps"):
        load_config(bad)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/quickstart.yaml", ["trainer.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_schema_keys_are_dotted_leaves():
    keys = schema_keys()
    assert "trainer.lr" in keys and "data.arith.num_terms" in keys and "algorithm.loss.eps_high" in keys
    assert "trainer" not in keys


def test_configuration_reference_is_current():
    from launch.config import reference_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text().strip() == reference_markdown().strip(), \
        "docs/configuration.md is stale: run `python -m launch.config > docs/configuration.md`"


@pytest.mark.parametrize("temperature", [0.005, 2.5])
def test_vllm_temperature_outside_its_range_is_a_config_error(temperature):
    with pytest.raises(ConfigError, match=r"rollout.temperature=.*\[0.01, 2\]"):
        load_config(None, ["rollout.engine=vllm", "rollout.gpus_per_worker=1", f"rollout.temperature={temperature}"])


def test_a_recipe_extends_another_and_states_only_the_differences(tmp_path):
    (tmp_path / "base.yaml").write_text("trainer:\n  lr: 3.0e-4\n  total_steps: 7\nrollout:\n  group_size: 4\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\ntrainer:\n  total_steps: 9\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "top.yaml").write_text("extends: ../mid.yaml\nrollout:\n  group_size: 2\n")
    cfg = load_config(tmp_path / "sub" / "top.yaml", ["trainer.lr=1e-5"])
    assert (cfg.trainer.lr, cfg.trainer.total_steps, cfg.rollout.group_size) == (1e-5, 9, 2)


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="`extends` loops back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml not found \(extended by .*c.yaml\)"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "ok.yaml").write_text("trainer:\n  lr: 1.0e-5\n")
    (tmp_path / "d.yaml").write_text("extends: ok.yaml\ntrainer:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"d.yaml: trainer.lrr: unknown key"):
        load_config(tmp_path / "d.yaml")


def test_every_unknown_key_of_every_source_is_reported_at_once(tmp_path):
    (tmp_path / "base.yaml").write_text("trainer:\n  lrr: 1\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\nrollout:\n  group_sise: 4\n"
                                       "actor_rollout_ref:\n  rollout:\n    n: 8\n  actor:\n    optim:\n      lr: 1.0e-6\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "top.yaml", ["trainer.total_step=3", "trainer.seed=1", "num_generations=8"])
    assert str(err.value).splitlines() == [
        f"{tmp_path / 'base.yaml'}: trainer.lrr: unknown key; did you mean trainer.lr?",
        f"{tmp_path / 'top.yaml'}: rollout.group_sise: unknown key; did you mean rollout.group_size?",
        f"{tmp_path / 'top.yaml'}: actor_rollout_ref.rollout.n: unknown key; verl's actor_rollout_ref.rollout.n is "
        "rollout.group_size here",
        f"{tmp_path / 'top.yaml'}: actor_rollout_ref.actor.optim.lr: unknown key; verl's "
        "actor_rollout_ref.actor.optim.lr is trainer.lr here",
        "command line: trainer.total_step=3: unknown key; did you mean trainer.total_steps?",
        "command line: num_generations=8: unknown key; TRL's num_generations is rollout.group_size here",
    ]


def test_keys_below_a_free_form_dict_field_are_the_estimators_to_check():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.advantage.params.anything=1"])
    assert "unknown key" not in str(err.value) and "algorithm.advantage.params" in str(err.value)


@pytest.mark.parametrize("override, hint", [
    ("rollout.n=8", "verl's actor_rollout_ref.rollout.n is rollout.group_size here"),
    ("--n_samples_per_prompt=8", "OpenRLHF's n_samples_per_prompt is rollout.group_size here"),
    ("n_samples_per_prompt=8", "OpenRLHF's n_samples_per_prompt is rollout.group_size here"),
    ("trainer.learning_rate=1e-6", "TRL's learning_rate is trainer.lr here"),
    ("beta=0.04", "TRL's beta is algorithm.loss.kl_coef here"),
    ("data.train_batch_size=32", "verl's data.train_batch_size is trainer.train_prompts here"),
    ("gradient_accumulation_steps=4", "TRL's gradient_accumulation_steps is trainer.mini_batches here (there is no"),
    ("actor_rollout_ref.actor.use_kl_loss=true", "verl's actor_rollout_ref.actor.use_kl_loss is algorithm.loss.kl_coef "
                                                 "here (there is no switch: kl_coef > 0 turns the KL loss on)"),
])
def test_foreign_names_get_our_key(override, hint):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(f"command line: {override}: unknown key; {hint}")


def test_a_flag_style_foreign_name_without_value_is_translated():
    with pytest.raises(ConfigError, match=r"dotted.key=value.*OpenRLHF's generate_max_len is rollout.max_new_tokens"):
        load_config(None, ["--generate_max_len", "1024"])


def test_every_foreign_name_maps_to_a_schema_key():
    keys = set(schema_keys())
    wrong = {name: f.target for name, f in FOREIGN_KEYS.items() if f.target not in keys}
    assert not wrong, f"foreign names whose target is not a schema key: {wrong}"
    assert not keys & FOREIGN_KEYS.keys(), "a foreign name that is also our key would never be reported"


def test_help_lists_every_key_with_type_default_and_meaning(capsys):
    from launch.train import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m launch.train CONFIG [dotted.key=value ...]")
    lines = out.splitlines()
    for k in key_docs():
        assert any(line.startswith(f"  {k.key} ({k.type_name}, default {k.default!r}): ") for line in lines), k.key
    assert "  trainer.lr (float, default 1e-06): AdamW learning rate (DeepSeekMath GRPO: 1e-6)" in lines
    assert "algorithm.loss:" in lines
    assert main(["-h"]) == 0 and capsys.readouterr().out == out


def test_eval_temperature_outside_vllms_range_is_refused_only_for_vllm():
    vllm = ["rollout.engine=vllm", "rollout.gpus_per_worker=1"]
    with pytest.raises(ConfigError, match=r"eval.temperature=3.0: with rollout.engine=vllm it must lie in \[0.01, 2\]"):
        load_config(None, [*vllm, "eval.temperature=3"])
    assert load_config(None, ["eval.temperature=3"]).eval.temperature == 3.0  # the hf engine takes any


@pytest.mark.parametrize("overrides, match", [
    (["trainer.async_mode=overlap"], r"trainer.async_mode='overlap': use one of sync, one_step_off, async"),
    (["trainer.async_mode=async", "trainer.max_staleness=0"], r"trainer.max_staleness=0: must be >= 1"),
    (["trainer.async_mode=one_step_off"], r"need an off-policy correction: set algorithm.loss.tis_level=token"),
    (["trainer.async_mode=async", "algorithm.loss.tis_level=token", "algorithm.loss.tis_scope=replayed",
      "algorithm.replay.enable=true"],
     r"algorithm.loss.tis_scope=all"),
    (["trainer.async_mode=one_step_off", "algorithm.loss.tis_level=token", "rollout.placement=colocated"],
     r"rollout.placement=colocated puts both on the same GPUs"),
    (["trainer.async_mode=async", "algorithm.loss.tis_level=token", "rollout.weight_transport=nccl"],
     r"use rollout.weight_transport=object_store"),
    (["trainer.async_mode=one_step_off", "algorithm.loss.tis_level=token", "algorithm.dynamic_sampling.enable=true",
      "algorithm.dynamic_sampling.carry_surplus=true"], r"carry_surplus=true with trainer.async_mode=one_step_off"),
])
def test_overlapped_modes_refuse_settings_they_cannot_honour(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_overlapped_mode_with_its_correction_loads():
    cfg = load_config(None, ["trainer.async_mode=async", "trainer.max_staleness=2", "algorithm.loss.tis_level=token"])
    assert (cfg.trainer.async_mode, cfg.trainer.max_staleness, cfg.algorithm.loss.tis_scope) == ("async", 2, "all")
