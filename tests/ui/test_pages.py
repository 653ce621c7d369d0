"""Server-rendered parts of issue 17 beyond the misleading states: the rollout page (previous/next,
the system prompt and tool definitions the model saw, answers in the table), the run page while
its baseline eval runs, the compare picker sent with nothing ticked, the favicon."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from experiments.models import Run, RunStatus, Trajectory
from experiments.services.runs import log_run
from tests.factories import UserFactory
from tests.runs_ui.conftest import TrajectoryFactory
from tests.watch.support import build_flagged_run

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_rollout_page_steps_through_its_step_and_shows_what_the_model_saw():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    rollouts = list(
        Trajectory.objects.filter(run=run, split="train", step=1).order_by(
            "group_index", "sample_index", "pk"
        )
    )
    assert len(rollouts) == 8
    client = client_for(user)
    first = client.get(f"/runs/{run.pk}/rollouts/{rollouts[0].trace_id}/").content.decode()
    assert (
        'id="previous-rollout"' not in first
        and f'href="/runs/{run.pk}/rollouts/{rollouts[1].trace_id}/"' in first
    )
    middle = client.get(f"/runs/{run.pk}/rollouts/{rollouts[4].trace_id}/").content.decode()
    assert re.search(
        rf'id="previous-rollout" rel="prev" href="/runs/{run.pk}/rollouts/{rollouts[3].trace_id}/"', middle
    )
    assert re.search(
        rf'id="next-rollout" rel="next" href="/runs/{run.pk}/rollouts/{rollouts[5].trace_id}/"', middle
    )
    last = client.get(f"/runs/{run.pk}/rollouts/{rollouts[-1].trace_id}/").content.decode()
    assert 'id="next-rollout"' not in last
    # The run's tool definition, with its parameters, and the system prompt among the turns.
    tools = middle[middle.index('id="tools-offered"') :]
    assert '<span class="mono">lookup</span>' in tools and "&quot;key&quot;" in tools
    assert "Answer with the price. Use the lookup tool." in middle


def test_an_items_own_tools_are_the_ones_shown():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    rollout = Trajectory.objects.filter(run=run, split="train").first()
    item = rollout.item
    item.data = {**item.data, "tools": [{"type": "function", "function": {"name": "grep", "parameters": {}}}]}
    item.save()
    page = client_for(user).get(f"/runs/{run.pk}/rollouts/{rollout.trace_id}/").content.decode()
    tools = page[page.index('id="tools-offered"') :]
    assert '<span class="mono">grep</span>' in tools and '<span class="mono">lookup</span>' not in tools


def test_the_rollout_table_has_an_answer_column():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    TrajectoryFactory(run=run, step=1, final_answer="The capital is Paris, of course.")
    page = client_for(user).get(f"/runs/{run.pk}/rollouts/?step=1").content.decode()
    assert "<th>Answer</th>" in page
    assert (
        '<td class="answer" title="The capital is Paris, of course.">The capital is Paris, of course.</td>'
        in page
    )


def test_the_run_page_says_what_happens_before_anything_is_plotted():
    user = UserFactory()
    like = build_flagged_run(user, steps=1)
    run = Run.objects.create(
        owner=user,
        name="starting",
        base_model=like.base_model,
        train_dataset=like.train_dataset,
        grader=like.grader,
        status=RunStatus.RUNNING,
        total_steps=10,
    )
    client = client_for(user)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert re.search(r'id="progress-phase" role="status">Starting: loading the model', page)
    # The trainer's eval log lines (trainer/loop.py) become the phase.
    log_run(run_id=run.pk, level="info", message="baseline eval: evaluating 8 items × 4 rollouts")
    log_run(run_id=run.pk, level="info", message="baseline eval: evaluating 3/8 items done")
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert re.search(r'id="progress-phase" role="status">Baseline eval: evaluating 3/8 items done<', page)
    # A finished run has no phase line.
    finished = client.get(f"/runs/{like.pk}/").content.decode()
    assert re.search(r'id="progress-phase" role="status" hidden>', finished)


def test_compare_selected_with_nothing_ticked_says_so():
    user = UserFactory()
    build_flagged_run(user, steps=1)
    page = client_for(user).get("/compare/?picked=1").content.decode()
    assert "No run was ticked" in page
    assert "No run was ticked" not in client_for(user).get("/compare/").content.decode()


def test_the_favicon_is_served_to_anyone():
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


def test_log_times_are_marked_for_one_clock_format():
    """The server renders each log line's time as <time datetime=...> that app.js rewrites in the
    reader's clock (24-hour), the same function the live lines use (run_page.js)."""
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    log_run(run_id=run.pk, level="info", message="hello")
    page = client_for(user).get(f"/runs/{run.pk}/").content.decode()
    assert re.search(
        r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^"]*" data-local="time">\d\d:\d\d:\d\d</time>  \[info\] hello',
        page,
    )
