"""Queries per request for what bench/bench_load.py's people ask, on the real database: a bound per
page and API call, and no query per listed row (the count is the same for 2 runs as for 8)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from experiments.models import Run
from experiments.services.api_tokens import create_token
from tests.factories import (
    DatasetFactory,
    DatasetItemFactory,
    GraderFactory,
    RunFactory,
    ToolFactory,
    UserFactory,
)
from tests.runs_ui.conftest import write_metrics

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_url")]

# The most queries each may make (session and user included; the API authenticates by token).
BOUNDS = {
    "/": 8,  # 12 before: five counts for the tiles, now one query
    "/runs/": 3,
    "/datasets/": 3,
    "/tools/": 3,
    "/graders/": 3,
    "/datasets/{dataset}/": 6,
    "/runs/{run}/": 16,  # 19 before: the watch panel read every flagged rollout; the run owner again
    "/runs/{run}/rollouts/": 9,
    "/api/v1/runs/{run}/series/?x=step&max_points=2000&keys=reward,kl,loss": 9,
    "api /api/v1/runs/": 6,  # 4 + 2 per run before (each run's forks and owner)
    "api /api/v1/datasets/": 3,
    "api /api/v1/runs/{run}/metrics/": 3,
}


def make_account(runs: int):
    user = UserFactory()
    dataset = DatasetFactory(owner=user, status="ready", item_count=20)
    for index in range(20):
        DatasetItemFactory(dataset=dataset, index=index)
    for _ in range(3):
        ToolFactory(owner=user)
    grader = GraderFactory(owner=user)
    made = [
        RunFactory(owner=user, train_dataset=dataset, grader=grader, status="succeeded", total_steps=10)
        for _ in range(runs)
    ]
    fork = made[-1]
    Run.objects.filter(pk=fork.pk).update(parent=made[0], parent_step=5)  # a fork: lineage shown
    for run in made:
        write_metrics(run, range(1, 11), keys=("reward", "kl", "loss"))
    return user, dataset, made[0], create_token(user=user, name="load").key


def count(user, token, path: str) -> int:
    client = Client()
    headers = {}
    if path.startswith("api "):
        path = path.removeprefix("api ")
        headers = {"HTTP_AUTHORIZATION": f"Token {token}", "HTTP_ACCEPT": "application/json"}
    else:
        client.force_login(user)
    client.get(path, **headers)  # warm: what a busy server has cached
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured.captured_queries)


def test_queries_per_request_are_bounded_and_do_not_grow_with_the_rows():
    few = make_account(runs=2)
    many = make_account(runs=8)
    for template, bound in BOUNDS.items():
        counts = []
        for user, dataset, run, token in (few, many):
            path = template.format(dataset=dataset.pk, run=run.pk)
            counts.append(count(user, token, path))
        assert counts[0] == counts[1], f"{template}: {counts[0]} queries for 2 runs, {counts[1]} for 8"
        assert counts[1] <= bound, f"{template}: {counts[1]} queries (at most {bound})"


def test_dashboard_counts_in_one_query_match_the_tiles():
    from experiments.selectors import dashboard_counts

    user = UserFactory()
    DatasetFactory(owner=user, status="ready")
    DatasetFactory(owner=user, status="ready")
    DatasetFactory(owner=user, status="invalid")
    ToolFactory(owner=user)
    RunFactory(owner=user, status="running")
    RunFactory(owner=user, status="succeeded")
    RunFactory(status="running")  # someone else's
    with CaptureQueriesContext(connection) as captured:
        counts = dashboard_counts(user=user)
    assert len(captured.captured_queries) == 1
    # RunFactory makes a (ready) dataset and a grader per run.
    assert counts == {
        "dataset_count": 4,
        "rejected_upload_count": 1,
        "tool_count": 1,
        "grader_count": 2,
        "active_run_count": 1,
    }
    staff = UserFactory(is_staff=True)
    assert dashboard_counts(user=staff)["active_run_count"] == 2  # staff see everyone's, as visible_to
