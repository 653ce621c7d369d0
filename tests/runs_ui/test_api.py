"""The metrics and trajectories API: gap fill after a seq, series, filters, keyset pages, ownership."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from experiments.models import Trajectory
from tests.factories import RunFactory, UserFactory

from .conftest import TrajectoryFactory, write_metrics

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


def test_metrics_after_a_seq_returns_only_newer_steps(api, run):
    write_metrics(run, [1, 2, 3, 4])
    run.refresh_from_db()
    response = api.get(f"/api/v1/runs/{run.pk}/metrics/", {"after": run.last_seq - 2})
    assert response.status_code == 200
    body = response.json()
    assert [event["step"] for event in body["events"]] == [3, 4]
    assert body["last_seq"] == run.last_seq
    assert body["complete"] is True
    assert api.get(f"/api/v1/runs/{run.pk}/metrics/", {"after": "x"}).status_code == 400


def test_series_endpoint_downsamples_and_lists_keys(api, run):
    write_metrics(run, range(1, 31), keys=("reward", "loss", "tools/grep/calls"))
    response = api.get(
        f"/api/v1/runs/{run.pk}/series/", {"keys": "reward,loss", "max_points": 9, "x": "samples"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body["series"]) == {"reward", "loss"}
    assert body["keys"] == ["loss", "reward", "tools/grep/calls"]
    reward = body["series"]["reward"]
    assert len(reward["y"]) <= 9
    assert reward["step"][0] == 1 and reward["step"][-1] == 30
    assert reward["x"] == [step * 8 for step in reward["step"]]
    assert api.get(f"/api/v1/runs/{run.pk}/series/", {"x": "nope"}).status_code == 400
    everything = api.get(f"/api/v1/runs/{run.pk}/series/").json()
    assert set(everything["series"]) == {"loss", "reward", "tools/grep/calls"}


def test_other_users_cannot_read_a_runs_metrics_or_rollouts(run):
    write_metrics(run, [1])
    rollout = TrajectoryFactory(run=run)
    stranger = APIClient()
    stranger.force_authenticate(UserFactory(username="stranger"))
    assert stranger.get(f"/api/v1/runs/{run.pk}/metrics/").status_code == 404
    assert stranger.get(f"/api/v1/runs/{run.pk}/series/").status_code == 404
    assert stranger.get(f"/api/v1/trajectories/{rollout.trace_id}/").status_code == 404
    assert stranger.get("/api/v1/trajectories/", {"run": run.pk}).json()["results"] == []
    assert APIClient().get("/api/v1/trajectories/").status_code in (401, 403)


def test_keyset_pages_walk_every_rollout_once_in_order(api, run):
    for step in (1, 2, 3):
        for group in range(2):
            TrajectoryFactory.create_batch(4, run=run, step=step, group_index=group)
    TrajectoryFactory(run=RunFactory(owner=run.owner), step=1)  # another run of the same owner
    seen = []
    url, params = "/api/v1/trajectories/", {"run": run.pk, "limit": 5}
    pages = 0
    while url:
        body = api.get(url, params).json()
        seen += [(row["step"], row["trace_id"]) for row in body["results"]]
        url, params = body["next"], None
        pages += 1
    assert pages == 5
    assert len(seen) == 24 == len({trace for _, trace in seen})
    assert [step for step, _ in seen] == sorted(step for step, _ in seen)
    assert api.get("/api/v1/trajectories/", {"cursor": "garbage"}).status_code == 400


def test_filters(api, run):
    TrajectoryFactory(
        run=run, step=1, reward=0.9, tool_calls=2, tool_call_names=["grep", "lookup"], final_answer="a"
    )
    TrajectoryFactory(
        run=run, step=1, reward=0.1, tool_calls=0, flags=[{"rule": "no_tool_calls", "detail": ""}]
    )
    TrajectoryFactory(
        run=run, step=2, reward=None, grader_errors=[{"grader": "g", "type": "timeout", "message": "slow"}]
    )
    TrajectoryFactory(run=run, step=2, reward=0.5, tool_errors=1, split=Trajectory.Split.EVAL)

    def rewards(**params):
        body = api.get("/api/v1/trajectories/", {"run": run.pk, **params}).json()
        return sorted((row["reward"] for row in body["results"]), key=lambda r: -1 if r is None else r)

    assert rewards(step=1) == [0.1, 0.9]
    assert rewards(split="eval") == [0.5]
    assert rewards(min_reward=0.4, max_reward=0.95) == [0.5, 0.9]
    assert rewards(has_error="true") == [None, 0.5]
    assert rewards(has_error="false") == [0.1, 0.9]
    assert rewards(tool="grep") == [0.9]
    assert rewards(flagged="true") == [0.1]
    first = Trajectory.objects.get(reward=0.9)
    assert rewards(q=first.trace_id) == [0.9]
    assert rewards(q=first.trace_id[6:18]) == [0.9]


def test_one_rollout_by_trace_id_has_its_messages(api, run):
    rollout = TrajectoryFactory(run=run)
    body = api.get(f"/api/v1/trajectories/{rollout.trace_id}/").json()
    assert body["trace_id"] == rollout.trace_id
    assert body["run"] == run.pk
    assert body["messages"][2]["tool_calls"][0]["function"]["name"] == "lookup"
    assert api.get("/api/v1/trajectories/trace_missing/").status_code == 404


def test_schema_documents_the_endpoints_without_warnings(tmp_path):
    from django.core.management import call_command

    output = tmp_path / "schema.yaml"
    call_command(
        "spectacular",
        "--fail-on-warn",
        "--validate",
        "--file",
        str(output),
    )
    schema = output.read_text()
    for path in (
        "/api/v1/runs/{run_id}/series/",
        "/api/v1/runs/{run_id}/metrics/",
        "/api/v1/trajectories/{trace_id}/",
    ):
        assert path in schema


def test_keyset_pages_across_runs_and_within_a_step(api, run):
    second = RunFactory(owner=run.owner)
    for each in (run, second):
        TrajectoryFactory.create_batch(3, run=each, step=1)
        TrajectoryFactory.create_batch(3, run=each, step=2)
    seen, url, params = [], "/api/v1/trajectories/", {"limit": 4}
    while url:
        body = api.get(url, params).json()
        seen += [(row["run"], row["step"]) for row in body["results"]]
        url, params = body["next"], None
    assert seen == sorted(seen) and len(seen) == 12
    first = api.get("/api/v1/trajectories/", {"run": run.pk, "step": 2, "limit": 2}).json()
    rest = api.get(first["next"]).json()
    assert [row["step"] for row in first["results"] + rest["results"]] == [2, 2, 2]
    assert rest["next"] is None
    wrong_run = api.get("/api/v1/trajectories/", {"run": second.pk, "cursor": first["next_cursor"]})
    assert wrong_run.status_code == 400
