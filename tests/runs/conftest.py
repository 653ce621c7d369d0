"""Fixtures for end-to-end run tests: a tiny local model, the demo tool server, a user's setup."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from experiments.demo_servers.app import DemoServer
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, ToolFactory, UserFactory

LOOKUP_SCHEMA = {
    "type": "object",
    "properties": {"key": {"type": "string", "description": "A product code such as SKU-1001."}},
    "required": ["key"],
}


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A randomly initialised Qwen2-shaped model with a locally trained tokenizer (no hub)."""
    from trainer.tiny import build_tiny_model

    return build_tiny_model(Path(settings.DATA_DIR) / "models" / "tiny")


@pytest.fixture
def demo_server():
    server = DemoServer(port=0).start()
    yield server
    server.stop()


def lookup_item(code: str, price: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Answer with the price. Use the lookup tool."},
            {"role": "user", "content": f"What does {code} cost?"},
        ],
        "answer": price,
    }


@pytest.fixture
def run_setup(demo_server):
    """A user with a train and an eval dataset, the demo `lookup` tool and an endpoint grader."""
    owner = UserFactory(username="trainer-user")
    prices = [("SKU-1001", "4.99"), ("SKU-1002", "5.49"), ("SKU-1003", "12.00"), ("SKU-1004", "7.25")]
    train = DatasetFactory(owner=owner, name="prices-train", item_count=len(prices))
    for index, (code, price) in enumerate(prices):
        DatasetItemFactory(dataset=train, index=index, data=lookup_item(code, price), message_count=2)
    evaluation = DatasetFactory(owner=owner, name="prices-eval", split="eval", item_count=2)
    for index, (code, price) in enumerate([("SKU-1005", "18.40"), ("SKU-1006", "23.90")]):
        DatasetItemFactory(dataset=evaluation, index=index, data=lookup_item(code, price), message_count=2)
    tool = ToolFactory(
        owner=owner,
        name="lookup",
        parameters=LOOKUP_SCHEMA,
        url=demo_server.tool_url("lookup"),
        description="Look up a product by its code.",
    )
    grader = GraderFactory(
        owner=owner,
        name="remote",
        type="endpoint",
        spec={"type": "endpoint", "name": "remote", "url": demo_server.grade_url},
    )
    return {
        "owner": owner,
        "train": train,
        "eval": evaluation,
        "tool": tool,
        "grader": grader,
        "server": demo_server,
    }


TINY_RUN_CONFIG = {
    "steps": 3,
    "prompts_per_step": 2,
    "group_size": 2,
    "max_turns": 2,
    "max_new_tokens_per_turn": 12,
    "max_tokens_per_rollout": 64,
    "eval_interval": 2,
    "eval_samples_per_item": 2,
    "checkpoint_interval": 2,
    "micro_batch_size": 4,
    "learning_rate": 1e-3,
    "seed": 3,
}
