"""rftweb's trainer: multi-turn agent GRPO with LoRA, as a library (no Django, no global state).

    from trainer import TrainerConfig, train
    result = train(config=TrainerConfig(model=...), train_items=[...], eval_items=[...], tools=[...],
                   tool_executor=..., grader=..., reporter=..., output_dir="...")

The names are loaded lazily so that `trainer.config` and `trainer.interfaces` can be imported (by the
web app, to validate a config) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.config import ConfigError, TrainerConfig
    from trainer.loop import TrainResult, train

_LAZY = {
    "ConfigError": "trainer.config",
    "TrainerConfig": "trainer.config",
    "TrainResult": "trainer.loop",
    "train": "trainer.loop",
}

__all__ = ["ConfigError", "TrainResult", "TrainerConfig", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
