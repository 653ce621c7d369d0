"""TrainerConfig: defaults are valid, bad values are refused with the field's name in the message."""

from __future__ import annotations

import dataclasses

import pytest

from trainer import ConfigError, TrainerConfig
from trainer.config import GROUPS, defaults, settings


def test_defaults_with_a_model_are_valid_and_round_trip():
    config = TrainerConfig.from_dict({"model": "some/model"})
    assert config.loss_type == "dapo"
    assert TrainerConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "model"),
        ({"model": "m", "loss_type": "ppo"}, "loss_type"),
        ({"model": "m", "group_size": 1}, "group_size"),
        ({"model": "m", "learning_rate": "fast"}, "learning_rate"),
        ({"model": "m", "learning_rate": -1.0}, "learning_rate"),
        ({"model": "m", "steps": 2.5}, "steps"),
        ({"model": "m", "gradient_checkpointing": "yes"}, "gradient_checkpointing"),
        ({"model": "m", "top_p": 0}, "top_p"),
        ({"model": "m", "reward_scaling": "global"}, "reward_scaling"),
        (
            {"model": "m", "max_new_tokens_per_turn": 512, "max_tokens_per_rollout": 256},
            "max_new_tokens_per_turn",
        ),
        ({"model": "m", "lora_target_modules": []}, "lora_target_modules"),
        ({"model": "m", "clip_epsilon_low": 1.5}, "clip_epsilon_low"),
        ({"model": "m", "tool_call_budget": -1}, "tool_call_budget"),
        ({"model": "m", "warmup": 10}, "warmup"),
    ],
)
def test_invalid_values_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        TrainerConfig.from_dict(data)


def test_integral_floats_from_json_are_accepted_as_integers():
    config = TrainerConfig.from_dict({"model": "m", "group_size": 4.0, "tool_call_budget": None})
    assert config.group_size == 4 and isinstance(config.group_size, int)
    assert config.tool_call_budget is None


def test_every_field_is_described_once_in_its_metadata():
    """Help, group and choices live on the field; the web app and the API read them from there."""
    described = settings()
    assert [s.name for s in described] == [f.name for f in dataclasses.fields(TrainerConfig)]
    for setting in described:
        assert setting.help.strip() and "\n" not in setting.help, setting.name
        assert setting.group in GROUPS, setting.name
        if setting.choices is not None:
            assert getattr(TrainerConfig(), setting.name) in setting.choices, setting.name
    # Fields are written grouped, in page order: a group never reappears after another began.
    groups_in_order = [s.group for s in described]
    firsts = list(dict.fromkeys(groups_in_order))
    assert firsts == sorted(firsts, key=GROUPS.index)
    assert groups_in_order == sorted(groups_in_order, key=GROUPS.index)


@pytest.mark.parametrize("setting", [s for s in settings() if s.choices], ids=lambda s: s.name)
def test_a_value_outside_a_fields_choices_is_refused(setting):
    with pytest.raises(ConfigError, match=f"{setting.name}: must be one of {', '.join(setting.choices)}"):
        TrainerConfig.from_dict({"model": "m", setting.name: "not-a-choice"})
    for choice in setting.choices:
        assert getattr(TrainerConfig.from_dict({"model": "m", setting.name: choice}), setting.name) == choice


def test_defaults_are_the_fields_defaults():
    assert defaults()["prompts_per_step"] == TrainerConfig().prompts_per_step
    assert "extra" not in defaults() and "model" in defaults()
