"""One user's whole site, built through the real write paths: the pages the UI crawl and the
first-load benchmark visit, each kind once (dashboard, lists, details, forms, run page, rollouts,
compare, readiness, audits, API docs).

`seed_site()` returns {page name: path}. Shared by tests/ui/ and bench/bench_first_load.py.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from experiments.models import GraderAudit, ReadinessReport, Run, RunStatus, Trajectory
from experiments.selectors import run_state
from experiments.services import audit as audit_services
from experiments.services import datasets as dataset_services
from experiments.services import run_launch
from experiments.services.readiness import readiness_statistics
from experiments.services.runs import log_run, transition_run
from tests.factories import UserFactory
from tests.watch.support import build_flagged_run


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _capital_items(count: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer with a capital city. Use the lookup tool."},
                {
                    "role": "user",
                    "content": f"What is the capital of country number {i}? " + "Be brief. " * 8,
                },
            ],
            "answer": f"City {i}",
        }
        for i in range(count)
    ]


def _readiness_report(owner, *, run: Run, k: int, rewards_per_item) -> ReadinessReport:
    rollouts = [
        {
            "item_index": item,
            "sample_index": sample,
            "reward": reward,
            "tool_calls": 1 + sample % 2,
            "tool_call_names": ["lookup"] * (1 + sample % 2),
            "grader_errors": [],
        }
        for item, rewards in enumerate(rewards_per_item)
        for sample, reward in enumerate(rewards)
    ]
    results = readiness_statistics(rollouts)
    now = timezone.now()
    return ReadinessReport.objects.create(
        owner=owner,
        name=f"{run.train_dataset.name} · {run.grader.name} v1 · k={k}",
        base_model=run.base_model,
        dataset=run.train_dataset,
        grader=run.grader,
        k=k,
        status="succeeded",
        results=results,
        started_at=now - timedelta(seconds=40),
        finished_at=now,
    )


def cancelled_during_baseline(like: Run) -> Run:
    """A run cancelled from its page during the step-0 eval: no checkpoint was ever saved."""
    run = Run.objects.create(
        owner=like.owner,
        name="cancelled early",
        base_model=like.base_model,
        config=like.config,
        train_dataset=like.train_dataset,
        eval_dataset=like.eval_dataset,
        grader=like.grader,
        status=RunStatus.RUNNING,
        lease_owner="worker-seed",
        attempt=1,
        total_steps=20,
        started_at=timezone.now(),
    )
    run.tools.set(like.tools.all())
    run_launch.cancel_run(run_id=run.pk)
    transition_run(
        run_id=run.pk,
        status=RunStatus.CANCELLED,
        error=run_state.cancelled_message(run.pk),
        lease_owner="worker-seed",
    )
    return Run.objects.get(pk=run.pk)


def seed_site(username: str = "ada") -> tuple[object, dict[str, str]]:
    """(the user, {page name: path}) for a user with a little of everything."""
    owner = UserFactory(username=username)

    uploaded = dataset_services.upload_dataset(
        owner=owner, file=io.BytesIO(_jsonl(_capital_items(24))), name="capitals"
    ).dataset
    rejected = dataset_services.upload_dataset(
        owner=owner,
        file=io.BytesIO(b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n{"answer": 1}\n'),
        name="broken upload",
    ).dataset

    finished = build_flagged_run(owner, steps=6)
    log_run(run_id=finished.pk, level="info", message="Training finished after 6 steps.")
    second = build_flagged_run(owner, steps=3)
    cancelled = cancelled_during_baseline(finished)

    report = _readiness_report(
        owner,
        run=finished,
        k=4,
        rewards_per_item=[[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0.5, 1], [0, 0.5, 0, 0]],
    )
    single = _readiness_report(owner, run=finished, k=1, rewards_per_item=[[0], [0], [0], [0]])

    audit = audit_services.create_audit(
        owner=owner, run=finished, grader=finished.grader, sample_size=4, start=False
    )
    audit_services.execute_audit(audit_id=audit.pk)
    audit = GraderAudit.objects.get(pk=audit.pk)

    rollout = (
        Trajectory.objects.filter(run=finished, split=Trajectory.Split.TRAIN).order_by("step", "pk").first()
    )
    tool = finished.tools.first()
    pages = {
        "dashboard": reverse("dashboard"),
        "datasets": reverse("dataset-list"),
        "dataset-upload": reverse("dataset-upload"),
        "dataset": reverse("dataset-page", args=[uploaded.pk]),
        "dataset-rejected": reverse("dataset-page", args=[rejected.pk]),
        "tools": reverse("tool-list"),
        "tool-create": reverse("tool-create"),
        "tool-edit": reverse("tool-edit", args=[tool.pk]),
        "graders": reverse("grader-list"),
        "grader-create": reverse("grader-create"),
        "grader-edit": reverse("grader-edit", args=[finished.grader_id]),
        "runs": reverse("run-list"),
        "run-create": reverse("run-create"),
        "run-clone": reverse("run-create") + f"?clone={finished.pk}",
        "run": reverse("run-detail", args=[finished.pk]),
        "run-cancelled": reverse("run-detail", args=[cancelled.pk]),
        "rollouts": reverse("run-rollouts", args=[finished.pk]),
        "rollout": reverse("run-rollout", args=[finished.pk, rollout.trace_id]),
        "rollout-group": reverse("run-group", args=[finished.pk, "train", rollout.step, rollout.group_index]),
        "audits": reverse("run-audits", args=[finished.pk]),
        "audit": reverse("audit-detail", args=[audit.pk]),
        "compare-picker": reverse("compare"),
        "compare": reverse("compare") + f"?runs={finished.pk},{second.pk}&baseline={finished.pk}",
        "readiness-list": reverse("readiness-list"),
        "readiness": reverse("readiness-detail", args=[report.pk]),
        "readiness-k1": reverse("readiness-detail", args=[single.pk]),
        "api-docs": reverse("api-docs"),
    }
    return owner, pages
