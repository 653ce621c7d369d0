"""`python -m trainer <run file>` runs on its own (real subprocess, real HTTP tool server)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.toy import TOY_TOOL_NAME, toy_items

ROOT = Path(__file__).resolve().parents[2]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.slow
def test_module_entry_point_trains_and_writes_jsonl(tiny_model_dir, toy_tool_server, tmp_path):
    base_url, received = toy_tool_server
    _write_jsonl(tmp_path / "train.jsonl", toy_items(count=4, seed=1))
    _write_jsonl(tmp_path / "eval.jsonl", toy_items(count=2, seed=2))
    run_file = {
        "trainer": {
            "model": str(tiny_model_dir),
            "steps": 2,
            "prompts_per_step": 2,
            "group_size": 2,
            "max_new_tokens_per_turn": 8,
            "max_tokens_per_rollout": 64,
            "eval_samples_per_item": 2,
        },
        "train_file": "train.jsonl",
        "eval_file": "eval.jsonl",
        "output_dir": "out",
        "tools": [
            {
                "name": TOY_TOOL_NAME,
                "description": "Shows the secret colour.",
                "url": f"{base_url}/{TOY_TOOL_NAME}",
            }
        ],
        # Grader JSON as the web app takes it (the same code scores it).
        "grader": {
            "type": "string_check",
            "name": "exact",
            "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}",
            "operation": "eq",
        },
    }
    (tmp_path / "run.json").write_text(json.dumps(run_file))
    completed = subprocess.run(
        [sys.executable, "-m", "trainer", str(tmp_path / "run.json"), "--log-level", "WARNING"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["final_step"] == 2 and result["stopped"] is False
    assert Path(result["final_adapter_path"], "adapter_model.safetensors").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert "eval/pass@2" in metrics[0]["metrics"] and "reward" in metrics[1]["metrics"]
    trajectories = [
        json.loads(line) for line in (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()
    ]
    assert len(trajectories) == 4 + 2 * 4 + 4  # baseline eval, 2 train steps, final eval
    assert all(t["trace_id"].startswith("trace_") for t in trajectories)


def test_module_entry_point_reports_a_bad_field(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "trainer: {model: x, loss_type: ppo}\ntrain_file: t.jsonl\noutput_dir: out\n"
        "grader: {type: string_check, name: s, input: a, reference: a, operation: eq}\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "trainer", str(tmp_path / "run.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "loss_type" in completed.stderr


def test_importing_the_config_does_not_import_torch():
    code = (
        "import sys, trainer; trainer.TrainerConfig(model='m').validate(); assert 'torch' not in sys.modules"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr


@pytest.mark.slow
def test_trainer_never_imports_django_or_experiments():
    pattern = re.compile(r"^\s*(from|import)\s+(django|experiments)\b", re.MULTILINE)
    offenders = [str(p) for p in (ROOT / "trainer").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
    code = (
        "import sys, trainer, trainer.loop, trainer.standalone, trainer.tiny, trainer.toy, trainer.models;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'experiments')]; print(bad); assert not bad"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


# --- the run file's grader: the web app's grader JSON through the web app's grader code -----------------


def _run_file(grader, **extra):
    return {
        "trainer": {"model": "x"},
        "train_file": "t.jsonl",
        "output_dir": "out",
        "grader": grader,
        **extra,
    }


def test_the_run_file_takes_the_apps_grader_json():
    from trainer.__main__ import build_run_grader
    from trainer.graders import Grader
    from trainer.graders.types import MultiGrader

    multi = {
        "type": "multi",
        "graders": {
            "name": {
                "type": "text_similarity",
                "input": "{{sample.output_json.name}}",
                "reference": "{{item.name}}",
                "evaluation_metric": "fuzzy_match",
                "name": "n",
            },
            "email": {
                "type": "string_check",
                "input": "{{sample.output_json.email}}",
                "reference": "{{item.email}}",
                "operation": "eq",
                "name": "e",
            },
        },
        "calculate_output": "(name + email) / 2",
    }
    grader = build_run_grader(_run_file(multi), environ={})
    assert isinstance(grader, MultiGrader) and isinstance(grader, Grader)  # the app's class, not a copy
    import asyncio

    from trainer.graders import make_sample

    sample = make_sample(output_text=json.dumps({"name": "John Doe", "email": "e@x"}))
    result = asyncio.run(grader.grade(sample, {"name": "Jon Doe", "email": "e@x"}, trace_id="t"))
    assert abs(result.score - 29 / 30) < 1e-9  # (14/15 + 1) / 2, as the app scores it


def test_the_old_shorthand_graders_name_their_grader_json():
    from trainer.__main__ import build_run_grader
    from trainer.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        build_run_grader(_run_file({"type": "exact_match", "field": "answer"}), environ={})
    assert '"operation": "eq"' in str(refused.value)


def test_a_judge_grader_needs_an_endpoint_and_uses_the_one_given(tmp_path):
    from tests.http_test_server import Reply, ScriptedServer
    from trainer.__main__ import build_run_grader
    from trainer.config import ConfigError
    from trainer.graders import make_sample
    from trainer.outbound.client import run_sync

    judge = {
        "type": "label_model",
        "name": "sentiment",
        "model": "m",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
    }
    with pytest.raises(ConfigError) as refused:
        build_run_grader(_run_file(judge), environ={})
    assert "needs a judge endpoint" in str(refused.value)
    server = ScriptedServer()
    server.routes["/v1/chat/completions"] = lambda request: Reply(
        body=json.dumps({"choices": [{"message": {"content": "good"}}]}).encode()
    )
    try:
        endpoints = {"judge_base_url": server.url("/v1")}
        # The judge obeys the run file's outbound policy, as the tools do.
        with pytest.raises(ConfigError) as blocked_file:
            grader = build_run_grader(
                _run_file(judge, grader_endpoints=endpoints, outbound={"allow_loopback": False}), environ={}
            )
            result = run_sync(lambda: grader.grade(make_sample(output_text="fine"), {}, trace_id="t"))
            raise ConfigError(str(result.errors))
        assert "blocked" in str(blocked_file.value)
        grader = build_run_grader(
            _run_file(judge, grader_endpoints=endpoints, outbound={"allow_loopback": True}),
            environ={"RFT_JUDGE_API_KEY": "sk-from-env"},
        )
        result = run_sync(lambda: grader.grade(make_sample(output_text="fine"), {}, trace_id="t"))
        assert result.score == 1.0 and result.errors == []
        assert server.requests[-1].headers["authorization"] == "Bearer sk-from-env"
    finally:
        server.close()
