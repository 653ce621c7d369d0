"""A run of the warm-started toy model with a kept checkpoint, ready for the playground."""

from __future__ import annotations

import pytest

from experiments.demo_servers import DemoServer
from experiments.models import Checkpoint, Dataset, Grader, Tool
from experiments.services import demo
from experiments.services.run_launch import create_run
from experiments.services.training import run_output_dir
from tests.factories import UserFactory


@pytest.fixture(scope="session")
def toy_model():
    from experiments.services.training import toy_model_dir

    return toy_model_dir()


def make_adapter(model_dir, target) -> None:
    """A LoRA adapter on the toy model, in the run's checkpoint layout (as the trainer writes it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=demo.QUICK_DEMO_CONFIG["lora_target_modules"])
    get_peft_model(model, lora).save_pretrained(target)


@pytest.fixture
def demo_tools():
    with DemoServer() as server:
        yield server


@pytest.fixture
def playground_run(toy_model, demo_tools, settings):
    """A quick-demo run (greedy in the playground: the warm model then calls peek and copies it)."""
    owner = UserFactory(username="player")
    demo.seed_demo(owner=owner, tool_base_url=demo_tools.url)
    run = create_run(
        owner=owner,
        name="toy",
        base_model=demo.BUNDLED_TOY_MODEL,
        train_dataset=Dataset.objects.get(owner=owner, name=demo.QUICK_TRAIN),
        eval_dataset=Dataset.objects.get(owner=owner, name=demo.QUICK_EVAL),
        tools=list(Tool.objects.filter(owner=owner, name="peek")),
        grader=Grader.objects.get(owner=owner, name=demo.QUICK_GRADER),
        config={**demo.QUICK_DEMO_CONFIG, "eval_temperature": 0.0},
        start=False,
    )
    path = run_output_dir(run.pk) / "checkpoints" / "checkpoint-000010"
    make_adapter(toy_model, path)
    Checkpoint.objects.create(run=run, step=10, path=str(path), metrics={"reward": 0.7, "eval/reward": 0.75})
    return run
