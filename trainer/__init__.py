"""rftweb's trainer: multi-turn agent GRPO with LoRA, as a library (no Django, no global state).

    from trainer import TrainerConfig, train
    result = train(config=TrainerConfig(model=...), train_items=[...], eval_items=[...], tools=[...],
                   tool_executor=..., grader=..., reporter=..., output_dir="...")

`train` and `TrainResult` are imported on first use, so that `from trainer import TrainerConfig`
(validating a form, say) does not import torch.
"""

from typing import Any

from trainer.config import ConfigError, TrainerConfig

__all__ = ["ConfigError", "TrainResult", "TrainerConfig", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from trainer import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
