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
