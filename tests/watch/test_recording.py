"""record_step runs the watch: flags stored on the rollouts, watch metrics in the step's metrics."""

from __future__ import annotations

import re

import pytest

from experiments.models import MetricPoint, ReadinessReport, RunEvent, Trajectory
from tests.factories import UserFactory

from .support import HEDGE, build_flagged_run

pytestmark = pytest.mark.django_db


def test_hedging_rollouts_are_flagged_with_their_rules_and_counted_per_step():
    run = build_flagged_run(UserFactory())
    hedged = Trajectory.objects.filter(run=run, final_answer=HEDGE)
    assert hedged.count() == 1 + 2 + 3 + 4
    for rollout in hedged:
        rules = {flag["rule"] for flag in rollout.flags}
        # at step 4 the whole first group hedges alike: identical answers across the group as well
        whole_group = rollout.step == 4 and rollout.group_index == 0
        assert rules == {"no_tool_calls", "hedged_answer"} | ({"identical_group"} if whole_group else set())
        assert all(flag["detail"] for flag in rollout.flags)
    # honest rollouts (and the baseline itself) carry no flags
    assert not Trajectory.objects.filter(run=run).exclude(final_answer=HEDGE).exclude(flags=[]).exists()
    share = dict(MetricPoint.objects.filter(run=run, key="watch/flagged_share").values_list("step", "value"))
    assert share == pytest.approx({1: 1 / 8, 2: 2 / 8, 3: 3 / 8, 4: 4 / 8})
    assert MetricPoint.objects.get(run=run, step=4, key="watch/hedged_answer").value == 4
    # reward rises with the hacking while eval reward fell from the 0.5 baseline: both trends fire once
    trends = MetricPoint.objects.filter(run=run, key__startswith="watch/trend/", value=1)
    assert {"watch/trend/reward_up_flagged_up", "watch/trend/reward_up_eval_down"} <= set(
        trends.values_list("key", flat=True)
    )
    logged = RunEvent.objects.filter(
        run=run, kind="log", payload__message__startswith="Watch trend reward_up_flagged_up"
    )
    assert logged.count() == 1
    # the step-0 eval became the run's readiness baseline
    report = ReadinessReport.objects.get(run=run)
    assert report.results["k"] == 4 and report.results["mean_reward"] == 0.5
    assert report.grader_version == run.grader.version


def test_the_pause_rule_asks_the_worker_to_stop_and_names_the_rule():
    run = build_flagged_run(
        UserFactory(),
        watch_config={"pause": {"enabled": True, "rule": "hedged_answer", "threshold": 0.25, "window": 2}},
    )
    assert run.pause_requested
    # steps 2+3 average (2/8 + 3/8) / 2 = 31% >= 25%; steps 1+2 average 19% did not fire
    assert run.paused_by["rule"] == "hedged_answer" and run.paused_by["step"] == 3
    assert "rule hedged_answer" in run.paused_by["detail"]


def test_the_watch_reads_a_bounded_history_so_a_late_step_costs_what_an_early_one_does():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from experiments.models import Run
    from experiments.models.run import RunStatus
    from experiments.services.recording import record_step

    from .support import record

    run = build_flagged_run(UserFactory(), steps=2)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, lease_owner="worker-test")

    def history_rows(step):
        rollouts = [
            record(
                step=step,
                split="train",
                item_index=0,
                group_index=0,
                sample_index=s,
                answer=HEDGE,
                reward=1.0,
                calls=0,
            )
            for s in range(4)
        ]
        with CaptureQueriesContext(connection) as queries:
            record_step(
                run_id=run.pk,
                lease_owner="worker-test",
                step=step,
                metrics={"reward": 1.0},
                trajectories=rollouts,
            )
        reads = [
            q["sql"] for q in queries.captured_queries if '"experiments_metricpoint"."step" >=' in q["sql"]
        ]
        assert len(reads) == 1, "the watch reads its history in one bounded query"
        count = re.sub(r"^SELECT .*? FROM", "SELECT count(*) FROM", reads[0], count=1).split(" ORDER BY")[0]
        with connection.cursor() as cursor:
            cursor.execute(count)
            return cursor.fetchone()[0]

    early = history_rows(3)
    for step in range(4, 40):
        history_rows(step)
    # a window of max(trend_window 5, pause window 3) steps of the ~14 watch keys, however long the run
    assert history_rows(40) == history_rows(41) <= early + 14 * 5


def test_the_watch_panel_counts_in_postgresql_match_the_rollouts_read_one_by_one():
    """The run page's watch panel counts flagged rollouts by rule and reads the latest trends in SQL
    (a live run's page is opened while its rollouts grow); the same as reading every rollout."""
    from experiments.selectors import readiness as readiness_selectors

    run = build_flagged_run(UserFactory(), steps=6)
    rollouts, flagged, counts, latest = readiness_selectors._watch_counts_portable(run=run)
    assert flagged > 0 and any(counts.values())
    summary = readiness_selectors.run_watch_summary(run=run)
    assert (summary["rollouts"], summary["flagged"]) == (rollouts, flagged)
    assert {row["rule"]: row["count"] for row in summary["by_rule"]} == {
        rule: counts.get(rule, 0) for rule in readiness_selectors.ROLLOUT_RULES
    }
    assert [trend["active"] for trend in summary["trends"]] == [
        latest.get(rule) == 1.0 for rule in readiness_selectors.TREND_RULES
    ]
    assert any(trend["active"] for trend in summary["trends"])


def test_a_stopped_runs_watch_counts_are_kept_until_its_next_event(django_assert_num_queries):
    """A stopped run's page reads its watch counts once per last event: again, no query; a new event
    (a step recorded or discarded after a resume) counts afresh. A running run always counts afresh."""
    from experiments.models import Run
    from experiments.selectors import readiness as readiness_selectors
    from experiments.services.runs import NewEvent, append_events

    run = build_flagged_run(UserFactory(), steps=4)
    Run.objects.filter(pk=run.pk).update(status="succeeded")
    run.refresh_from_db()
    first = readiness_selectors.run_watch_summary(run=run)
    with django_assert_num_queries(0):
        assert readiness_selectors.run_watch_summary(run=run) == first

    extra = Trajectory.objects.filter(run=run).exclude(flags=[]).first()
    extra.pk, extra.trace_id = None, "extra-flagged"
    extra.save()
    append_events(run=run, events=[NewEvent(kind=RunEvent.Kind.LOG, payload={"message": "resumed"})])
    run.refresh_from_db()
    assert readiness_selectors.run_watch_summary(run=run)["flagged"] == first["flagged"] + 1

    Run.objects.filter(pk=run.pk).update(status="running")
    run.refresh_from_db()
    Trajectory.objects.filter(trace_id="extra-flagged").delete()
    assert readiness_selectors.run_watch_summary(run=run)["flagged"] == first["flagged"]
