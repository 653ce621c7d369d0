"""`append_events` is the one way to write a run's event log: it numbers events after `last_seq`
under the caller's row lock, and refuses to run without a transaction to hold that lock."""

from __future__ import annotations

import pytest
from django.db import transaction

from experiments.models import Run, RunEvent
from experiments.services.runs import NewEvent, append_events
from tests.factories import RunFactory


@pytest.mark.django_db(transaction=True)
def test_events_are_numbered_after_last_seq_under_the_lock_and_refused_without_a_transaction():
    run = RunFactory()
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        first = append_events(
            run=locked,
            events=[NewEvent(kind=RunEvent.Kind.LOG, payload={"level": "info", "message": m}) for m in "ab"],
        )
    assert [event.seq for event in first] == [run.last_seq + 1, run.last_seq + 2]
    assert Run.objects.get(pk=run.pk).last_seq == run.last_seq + 2

    with pytest.raises(RuntimeError, match="select_for_update"):
        append_events(run=Run.objects.get(pk=run.pk), events=[NewEvent(kind=RunEvent.Kind.LOG, payload={})])
    assert RunEvent.objects.filter(run_id=run.pk).count() == 2
