"""The run page, the rollout table, one rollout and a group, rendered by the server."""

from __future__ import annotations

import json
import re

import pytest

from experiments.models import Trajectory
from tests.factories import UserFactory

from .conftest import TrajectoryFactory, write_metrics

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def browser_client(client, owner):
    client.force_login(owner)
    return client


def test_run_page_shows_progress_charts_and_the_lead_actions(browser_client, run):
    write_metrics(run, range(1, 21), keys=("reward", "step_time"), value=lambda key, step: 3.0)
    response = browser_client.get(f"/runs/{run.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="progress-step">20<' in html
    assert "ETA 240 s" in html  # 80 steps left × 3 s
    config = response.context["page_config"]
    assert config["lastSeq"] == 20
    assert config["seriesUrl"] == f"/api/v1/runs/{run.pk}/series/"
    assert {"reward", "step_time"} <= set(config["metricKeys"])
    for chart in (
        "reward",
        "eval",
        "tool-calls",
        "turns",
        "calls-per-turn",
        "length",
        "kl",
        "loss",
        "entropy",
        "timings",
        "engine-occupancy",
        "engine-prefill",
        "grader-errors",
    ):
        assert f'id="chart-{chart}"' in html
    assert 'id="run-actions"' in html  # the lead's Cancel / Resume / downloads block
    assert (
        json.loads(html.split('id="run-page-config" type="application/json">')[1].split("</script>")[0])[
            "runId"
        ]
        == run.pk
    )


def test_run_page_lists_the_runs_tools_and_mcp_tools_by_name(browser_client, run, owner):
    from experiments.models import Run, Tool

    run.tools.add(
        Tool.objects.create(owner=owner, name="zeta_lookup", url="https://tools.example.com/z"),
        Tool.objects.create(owner=owner, name="alpha_search", url="https://tools.example.com/a"),
    )
    Run.objects.filter(pk=run.pk).update(mcp_tools=[{"name": "read_file", "server": 1}])
    html = browser_client.get(f"/runs/{run.pk}/").content.decode()
    tools = re.sub(r"\s+", " ", html.split("<dt>Tools</dt><dd>")[1].split("</dd>")[0])
    assert tools == (
        '<span class="mono">alpha_search</span>, <span class="mono">zeta_lookup</span>, '
        '<span class="mono">read_file</span> <span class="muted small">(MCP)</span>'
    )


def test_run_page_without_tools_shows_a_dash(browser_client, run):
    html = browser_client.get(f"/runs/{run.pk}/").content.decode()
    assert html.split("<dt>Tools</dt><dd>")[1].split("</dd>")[0] == "—"


def test_run_pages_are_private(client, run):
    client.force_login(UserFactory(username="intruder"))
    rollout = TrajectoryFactory(run=run)
    for path in (
        f"/runs/{run.pk}/",
        f"/runs/{run.pk}/rollouts/",
        f"/runs/{run.pk}/rollouts/{rollout.trace_id}/",
        f"/runs/{run.pk}/groups/train/1/0/",
        f"/runs/{run.pk}/histogram/",
        f"/runs/{run.pk}/actions/",
    ):
        assert client.get(path).status_code == 404, path


def test_the_action_bar_alone_follows_the_run_state(browser_client, run):
    run.status = "running"
    run.save()
    running = browser_client.get(f"/runs/{run.pk}/actions/").content.decode()
    assert running.strip().startswith('<section class="card run-actions" id="run-actions">')
    assert 'id="cancel-run"' in running and 'id="resume-run"' not in running
    run.status = "failed"
    run.attempt = 1
    run.save()
    failed = browser_client.get(f"/runs/{run.pk}/actions/").content.decode()
    assert 'id="cancel-run"' not in failed and 'id="resume-run"' in failed
    assert "csrfmiddlewaretoken" in failed  # its forms post like the page's own


def test_rollout_table_defaults_to_the_latest_step_and_pages(browser_client, run):
    TrajectoryFactory.create_batch(3, run=run, step=1)
    TrajectoryFactory.create_batch(60, run=run, step=2, reward=0.75)
    response = browser_client.get(f"/runs/{run.pk}/rollouts/")
    assert response.status_code == 200
    assert response.context["selected_step"] == 2
    # a number field bounded by the run's steps (not a list of every step), at the latest one
    step_field = re.search(r'<input type="number" name="step"[^>]*>', response.content.decode()).group(0)
    assert 'value="2"' in step_field and 'min="1" max="2"' in step_field
    assert len(response.context["page"].rows) == 50
    assert response.context["next_query"]
    second = browser_client.get(f"/runs/{run.pk}/rollouts/?{response.context['next_query']}")
    assert len(second.context["page"].rows) == 10
    assert {row.step for row in second.context["page"].rows} == {2}
    filtered = browser_client.get(f"/runs/{run.pk}/rollouts/", {"step": "", "max_reward": "0.6"})
    assert [row.step for row in filtered.context["page"].rows] == [1, 1, 1]
    evaluated = TrajectoryFactory(run=run, step=1, split=Trajectory.Split.EVAL)
    found = browser_client.get(f"/runs/{run.pk}/rollouts/", {"q": evaluated.trace_id})
    assert [row.trace_id for row in found.context["page"].rows] == [evaluated.trace_id]  # any step, any split


def test_rollout_view_shows_each_tool_call_with_arguments_result_latency_and_error(browser_client, run):
    rollout = TrajectoryFactory(
        run=run,
        tool_calls=2,
        tool_call_names=["lookup", "grep"],
        tool_errors=1,
        sub_scores={"exact": 1.0, "f1": 0.5},
        messages=[
            {"role": "user", "content": "Which file?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"key": "x"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "grep", "arguments": "{not json"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "value of x", "latency_ms": 42.0},
            {
                "role": "tool",
                "tool_call_id": "call_b",
                "content": "error: timeout",
                "latency_ms": 3000.0,
                "error_type": "timeout",
            },
            {"role": "assistant", "content": "src/a.py"},
        ],
        final_answer="src/a.py",
    )
    response = browser_client.get(f"/runs/{run.pk}/rollouts/{rollout.trace_id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "&quot;key&quot;: &quot;x&quot;" in html  # arguments pretty-printed
    assert "value of x" in html and "42 ms" in html
    assert "(not valid JSON)" in html and "timeout" in html and "3000 ms" in html
    assert html.count('class="turn tool"') == 0  # results are folded into their calls
    turns = response.context["turns"]
    assert [turn.role for turn in turns] == ["user", "assistant", "assistant"]
    assert turns[1].tool_calls[1].error_type == "timeout"
    assert "f1" in html and "src/a.py" in html


def test_group_view_puts_the_prompts_rollouts_side_by_side_with_advantages(browser_client, run):
    for sample, reward in enumerate([1.0, 0.0, 0.5, 0.5]):
        TrajectoryFactory(
            run=run,
            step=4,
            group_index=2,
            sample_index=sample,
            reward=reward,
            advantage=(reward - 0.5) / 0.41,
        )
    TrajectoryFactory(run=run, step=4, group_index=3, sample_index=0)
    response = browser_client.get(f"/runs/{run.pk}/groups/train/4/2/")
    assert response.status_code == 200
    group = response.context["group"]
    assert [r.sample_index for r in group.rollouts] == [0, 1, 2, 3]
    assert group.reward_mean == pytest.approx(0.5)
    assert group.best_reward == 1.0
    html = response.content.decode()
    assert "1.22" in html and "-1.22" in html
    assert "What is the capital of item 2?" in html


def test_histogram_compares_baseline_latest_and_the_chosen_step(browser_client, run):
    for step, calls in [(1, [0, 5, 5, 9]), (2, [1, 1, 2, 2]), (3, [1, 1, 1, 2])]:
        for count in calls:
            TrajectoryFactory(run=run, step=step, tool_calls=count)
    TrajectoryFactory(run=run, step=3, tool_calls=7, split=Trajectory.Split.EVAL)
    body = browser_client.get(f"/runs/{run.pk}/histogram/", {"step": 2}).json()
    assert (body["first_step"], body["latest_step"]) == (1, 3)
    assert body["baseline"] == {"step": 1, "counts": {"0": 1, "5": 2, "9": 1}}
    assert body["latest"] == {"step": 3, "counts": {"1": 3, "2": 1}}
    assert body["chosen"] == {"step": 2, "counts": {"1": 2, "2": 2}}


RANK_KEYS = (
    "reward",
    "step_time",
    "world_size",
    "timing/communication_s",
    "timing/rank0/rollout_s",
    "timing/rank0/update_s",
    "timing/communication_s/rank0",
    "timing/rank1/rollout_s",
    "timing/rank1/update_s",
    "timing/communication_s/rank1",
)


def rank_value(key: str, step: int) -> float:
    if key == "world_size":
        return 2.0
    return {"timing/rank1/update_s": 0.75, "timing/communication_s": 0.125}.get(key, 0.5) + step / 100


def test_a_multi_device_run_shows_its_world_size_and_per_rank_times(browser_client, run):
    run.config = {**run.config, "devices": 2, "sharding": "fsdp", "kl_beta": 0.05}
    run.save()
    write_metrics(run, range(1, 4), keys=RANK_KEYS, value=rank_value)
    response = browser_client.get(f"/runs/{run.pk}/")
    html = response.content.decode()
    assert re.search(r"<dt>Devices</dt><dd>2, FSDP-sharded base</dd>", html)
    assert "Step 3: time per rank (s)" in html and "rank 0 in all: 0.155 s" in html
    rows = re.findall(
        r"<tr><td>(\d)</td><td class=\"num\">([\d.]+)</td><td class=\"num\">([\d.]+)</td>", html
    )
    assert rows == [("0", "0.530", "0.530"), ("1", "0.530", "0.780")]
    charts = {chart["id"]: chart for chart in response.context["page_config"]["charts"]}
    assert charts["ranks"]["prefix"] == ["timing/rank"] and 'id="chart-ranks"' in html
    assert charts["kl"]["title"] == "KL to the base model"


def test_a_single_device_run_has_no_rank_chart_and_says_when_kl_is_not_computed(browser_client, run):
    write_metrics(run, range(1, 3), keys=("reward", "step_time"), value=lambda key, step: 1.0)
    response = browser_client.get(f"/runs/{run.pk}/")
    html = response.content.decode()
    assert 'id="chart-ranks"' not in html
    assert "<dt>Devices</dt><dd>1</dd>" in html
    assert "KL to the base model (not computed: kl_beta is 0)" in html
