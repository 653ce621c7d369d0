"""The run form's devices, sharding and gradient-checkpointing fields: stored, validated, cloned."""

from __future__ import annotations

import pytest
from django.test import Client

from experiments.forms.runs import RunForm
from experiments.models import Run
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, UserFactory
from tests.watch.test_run_form import form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_setup():
    owner = UserFactory()
    train = DatasetFactory(owner=owner, item_count=1, status="ready")
    DatasetItemFactory(dataset=train, index=0)
    client = Client()
    client.force_login(owner)
    return (
        owner,
        client,
        {"name": "spread", "train_dataset": train.pk, "grader": GraderFactory(owner=owner).pk},
    )


def test_devices_sharding_and_checkpointing_are_stored_and_cloned(
    owner_setup, django_capture_on_commit_callbacks
):
    owner, client, required = owner_setup
    page = client.get("/runs/new/").content.decode()
    assert "Prompt groups are split between them" in page  # help from the trainer's field metadata
    assert '<option value="fsdp">fsdp</option>' in page
    data = form_data(
        RunForm(user=owner), **required, devices="2", sharding="fsdp", gradient_checkpointing="false"
    )
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/runs/new/", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    run = Run.objects.get(owner=owner)
    assert {k: run.config[k] for k in ("devices", "sharding", "gradient_checkpointing")} == {
        "devices": 2,
        "sharding": "fsdp",
        "gradient_checkpointing": False,
    }
    clone = RunForm.initial_from_run(run)
    assert (clone["devices"], clone["sharding"], clone["gradient_checkpointing"]) == (2, "fsdp", "false")


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_device_count_is_refused_on_the_form(owner_setup, value):
    owner, client, required = owner_setup
    response = client.post("/runs/new/", form_data(RunForm(user=owner), **required, devices=value))
    assert response.status_code == 200
    assert "A number of devices (1, 2, …) or auto." in response.content.decode()
    assert not Run.objects.exists()


def test_auto_devices_and_default_checkpointing_store_nothing_extra(
    owner_setup, django_capture_on_commit_callbacks
):
    owner, client, required = owner_setup
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/runs/new/", form_data(RunForm(user=owner), **required, devices="auto"))
    assert response.status_code == 302
    config = Run.objects.get(owner=owner).config
    assert config.get("devices") == "auto" and "gradient_checkpointing" not in config
