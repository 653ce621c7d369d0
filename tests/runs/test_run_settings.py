"""Each run setting is defined once, in `trainer/config.py`: the run form, the API schema and the
comparison read its help, group, label and choices from the field's metadata."""

from __future__ import annotations

import pytest
from django import forms
from django.test import Client

from experiments.forms.runs import RunForm
from experiments.models import Run
from tests.factories import DatasetFactory, DatasetItemFactory, GraderFactory, UserFactory
from tests.run_forms import form_data
from trainer.config import GROUPS, settings

pytestmark = pytest.mark.django_db


def shown_settings():
    return [s for s in settings() if not s.advanced and s.name != "model"]


def test_every_setting_the_form_shows_takes_help_label_and_choices_from_the_config():
    form = RunForm(user=UserFactory())
    shown = shown_settings()
    assert len(shown) >= 30
    for setting in shown:
        field = form.fields[setting.name]
        default = "empty" if setting.default is None else setting.default
        if setting.annotation == "bool | None":  # auto / on / off: empty is shown as auto
            default = "auto"
        assert field.help_text == f"{setting.help} Default: {default}.", setting.name
        assert field.label == setting.label
        assert form.get_initial_for_field(field, setting.name) == setting.default
        if setting.choices is not None:
            assert isinstance(field, forms.ChoiceField)
            assert tuple(value for value, _ in field.choices) == setting.choices
        elif setting.annotation == "bool | None":
            assert [label for _, label in field.choices] == ["auto", "on", "off"], setting.name
        else:
            assert not isinstance(field, forms.ChoiceField), setting.name
    # Advanced settings (and `model`, which the base-model fields stand for) stay off the form.
    trainer_fields = {s.name for s in settings()}
    assert {name for name in form.fields if name in trainer_fields} == {s.name for s in shown}
    assert form.fields["kl_beta"].label == "KL beta"


def test_the_form_groups_settings_as_the_config_does_in_its_order():
    form = RunForm(user=UserFactory())
    groups = form.hyperparameter_groups()
    assert [name for name, _ in groups] == [g for g in GROUPS if any(s.group == g for s in shown_settings())]
    by_group = {name: [bound.name for bound in fields] for name, fields in groups}
    for group, names in by_group.items():
        assert names == [s.name for s in shown_settings() if s.group == group]
    assert by_group["Rollouts"][:2] == ["prompts_per_step", "group_size"]


def test_the_trainers_bounds_are_reported_on_the_field_and_only_changes_are_stored(
    django_capture_on_commit_callbacks,
):
    owner = UserFactory()
    client = Client()
    client.force_login(owner)
    train = DatasetFactory(owner=owner, item_count=1, status="ready")
    DatasetItemFactory(dataset=train, index=0)
    base = {"name": "settings", "train_dataset": train.pk, "grader": GraderFactory(owner=owner).pk}

    refused = client.post("/runs/new/", form_data(RunForm(user=owner), **base, group_size="1", steps="0"))
    assert refused.status_code == 200
    errors = refused.context["form"].errors
    assert errors["group_size"] == ["Must be >= 2 (GRPO compares rollouts within a group), got 1."]
    assert errors["steps"] == ["Must be >= 1, got 0."]
    assert not Run.objects.exists()

    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            "/runs/new/",
            form_data(RunForm(user=owner), **base, loss_type="grpo", kl_beta="0.04", steps="5"),
        )
    assert response.status_code == 302, response.content.decode()[-2000:]
    assert Run.objects.get(owner=owner).config == {"loss_type": "grpo", "kl_beta": 0.04, "steps": 5}


def test_the_api_schema_documents_every_setting_from_the_config():
    client = Client()
    client.force_login(UserFactory())
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    components = schema["components"]["schemas"]
    config = components["RunCreateRequest"]["properties"]["config"]
    documented = components[config["allOf"][0]["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert set(documented) == {s.name for s in settings()}
    for setting in settings():
        assert documented[setting.name]["description"].startswith(setting.help), setting.name
    loss_type = documented["loss_type"]
    enum = components[loss_type["allOf"][0]["$ref"].rsplit("/", 1)[-1]]["enum"]
    assert tuple(enum) == next(s.choices for s in settings() if s.name == "loss_type")
    assert documented["steps"]["nullable"] is True
