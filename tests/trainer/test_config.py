"""TrainerConfig: defaults are valid, bad values are refused with the field's name in the message."""

from __future__ import annotations

import pytest

from trainer import ConfigError, TrainerConfig


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
