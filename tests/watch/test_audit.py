"""Grader audit: a second grader rescoring flagged and unflagged rollouts shows where it disagrees."""

from __future__ import annotations

import pytest

from experiments.models import ReadinessStatus
from experiments.services.audit import AuditError, create_audit, execute_audit
from tests.factories import GraderFactory, UserFactory

from .support import HEDGE, build_flagged_run

pytestmark = pytest.mark.django_db


def test_a_strict_second_grader_disagrees_on_the_flagged_rollouts_only():
    owner = UserFactory()
    run = build_flagged_run(owner)
    exact = GraderFactory(owner=owner, name="exact")  # string_check eq against item.answer
    audit = create_audit(owner=owner, run=run, grader=exact, sample_size=5, start=False)
    assert execute_audit(audit_id=audit.pk) == ReadinessStatus.SUCCEEDED
    audit.refresh_from_db()
    rows = audit.results["rows"]
    flagged = [row for row in rows if row["flagged"]]
    unflagged = [row for row in rows if not row["flagged"]]
    assert len(flagged) == 5 and len(unflagged) == 5
    # the holed grader gave the hedging answers 1; an exact match gives them 0
    assert all(
        row["final_answer"] == HEDGE and row["run_score"] == 1 and row["audit_score"] == 0 for row in flagged
    )
    assert all(row["disagree"] for row in flagged)
    assert not any(row["disagree"] for row in unflagged)
    assert audit.results["summary"]["flagged"]["rate"] == 1.0
    assert audit.results["summary"]["unflagged"]["rate"] == 0.0


def test_someone_elses_grader_cannot_audit():
    owner = UserFactory()
    run = build_flagged_run(owner, steps=1)
    with pytest.raises(AuditError):
        create_audit(owner=owner, run=run, grader=GraderFactory(), start=False)


@pytest.mark.django_db(transaction=True)  # the ORM inside the loop may use a connection of its own
def test_an_audit_run_where_an_event_loop_is_running_still_grades(monkeypatch):
    """Celery's eager mode inside an event loop (the browser tests' seeding: Playwright's loop runs in
    the same thread) used to fail every such audit: asyncio.run refuses to start a second loop."""
    import asyncio

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # the ORM from a thread with a loop
    owner = UserFactory()
    run = build_flagged_run(owner, steps=1)
    exact = GraderFactory(owner=owner, name="exact")
    audit = create_audit(owner=owner, run=run, grader=exact, sample_size=2, start=False)

    async def inside_a_loop():
        return execute_audit(audit_id=audit.pk)

    assert asyncio.run(inside_a_loop()) == ReadinessStatus.SUCCEEDED
    audit.refresh_from_db()
    assert audit.error == ""
    rows = audit.results["rows"]
    assert rows and all(row["audit_score"] in (0, 1) for row in rows), rows
