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
        "grader": {"type": "exact_match", "field": "answer"},
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
        "trainer: {model: x, loss_type: ppo}\ntrain_file: t.jsonl\noutput_dir: out\ngrader: {type: exact_match}\n"
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
