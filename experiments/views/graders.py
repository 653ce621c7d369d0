"""Grader pages: list, create/edit from a per-type form or pasted grader JSON, delete, "Run grader".

Thin: forms parse, services check and write (errors come back by field path), selectors read. With
htmx the same view answers the form partial, errors in place; without it, the full page.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_POST

from ..forms.graders import (
    GRADER_TYPE_CHOICES,
    GRADER_TYPE_HELP,
    GraderBaseForm,
    GraderJSONForm,
    GraderRunForm,
    spec_text,
    type_forms,
)
from ..selectors import graders as grader_selectors
from ..services import graders as grader_services

EXAMPLE_SPEC = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def _redirect(request, url: str) -> HttpResponse:
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def grader_list(request):
    graders = list(grader_selectors.graders_for(user=request.user))
    for grader in graders:
        grader.needs = grader_services.grader_needs(grader)
    return render(request, "experiments/grader_list.html", {"graders": graders})


class FormState:
    """Everything the grader form partial renders: both tabs, the active one, errors."""

    def __init__(self, *, grader=None, mode: str = "form", data=None, json_text: str | None = None) -> None:
        self.grader = grader
        self.mode = mode
        # The per-type forms show secrets masked (a multi grader's sub-grader JSON included).
        spec = grader_services.masked_spec(grader) if grader is not None else None
        secrets = grader.secrets if grader is not None else None
        if data is not None and mode == "form":
            self.base = GraderBaseForm(data)
            self.types = type_forms(data=data, bound_type=data.get("type"), spec=spec, secrets=secrets)
        else:
            initial = {"name": grader.name, "type": grader.type} if grader is not None else {}
            self.base = GraderBaseForm(initial=initial)
            self.types = type_forms(spec=spec, secrets=secrets)
        if data is not None and mode == "json":
            self.json_form = GraderJSONForm(data)
        else:
            text = json_text or spec_text(
                grader_services.masked_spec(grader) if grader is not None else EXAMPLE_SPEC
            )
            self.json_form = GraderJSONForm(initial={"spec": text})
        self.json_problems: list[str] = []
        self.saved = False

    @property
    def active_type(self) -> str:
        value = self.base["type"].value()
        return value if value in self.types else "string_check"

    def type_sections(self) -> list[dict]:
        return [
            {"type": key, "label": label, "help": GRADER_TYPE_HELP[key], "form": self.types[key]}
            for key, label in GRADER_TYPE_CHOICES
        ]

    def spec_from_form(self) -> dict | None:
        base_ok = self.base.is_valid()
        type_form = self.types[self.active_type]
        type_ok = type_form.is_valid()
        if not (base_ok and type_ok):
            return None
        return type_form.to_spec(self.base.cleaned_data["name"])

    def spec_from_json(self) -> dict | None:
        if not self.json_form.is_valid():
            return None
        return self.json_form.cleaned_data["spec"]

    def place_errors(self, error: grader_services.GraderValidationError) -> None:
        if self.mode == "json":
            self.json_problems = [
                f"{where}: {message}" if where else message
                for where, messages_ in error.by_path.items()
                for message in messages_
            ]
            return
        type_form = self.types[self.active_type]
        for where, messages_ in error.by_path.items():
            if where in ("name", "type"):
                self.base.add_error(where, messages_)
                continue
            field = type_form.field_for_path(where)
            shown = [message if where == field else f"{where}: {message}" for message in messages_]
            if field == "headers":
                type_form.headers_error.extend(shown)
            elif field is not None:
                type_form.add_error(field, shown)
            else:
                self.base.add_error(
                    None, [f"{where}: {message}" if where else message for message in messages_]
                )

    def hide_secrets(self) -> None:
        """A failed submission shows what was typed with secret values masked, never the values.
        (Text that is not JSON cannot be searched for secrets and is shown as typed.)"""
        for form, key, wrap in (
            (self.json_form, "spec", False),
            (self.types["multi"], self.types["multi"].add_prefix("graders"), True),
        ):
            if not form.is_bound:
                continue
            try:
                value = json.loads(form.data.get(key) or "")
            except ValueError:
                continue
            if wrap and isinstance(value, dict):
                value = grader_services.mask_secrets_in({"type": "multi", "graders": value})["graders"]
            else:
                value = grader_services.mask_secrets_in(value)
            data = form.data.copy()
            data[key] = spec_text(value)
            form.data = data

    def json_errors(self) -> list[str]:
        return list(self.json_form.errors.get("spec", [])) + self.json_problems

    def context(self) -> dict:
        return {
            "state": self,
            "grader": self.grader,
            "base": self.base,
            "json_form": self.json_form,
            "sections": self.type_sections(),
        }


def _render_form(request, state: FormState):
    context = state.context()
    if request.htmx and not request.htmx.boosted:
        return render(request, "experiments/_grader_form.html", context)
    if state.grader is not None:
        context.update(_run_panel_context(request, grader=state.grader, run_form=GraderRunForm()))
        context["runs"] = grader_selectors.runs_using_grader(grader=state.grader)
        context["needs"] = grader_services.grader_needs(state.grader)
        return render(request, "experiments/grader_edit.html", context)
    return render(request, "experiments/grader_create.html", context)


def _save(request, *, grader=None):
    mode = "json" if request.POST.get("mode") == "json" else "form"
    state = FormState(grader=grader, mode=mode, data=request.POST)
    spec = state.spec_from_json() if mode == "json" else state.spec_from_form()
    if spec is not None:
        try:
            if grader is None:
                saved = grader_services.create_grader(owner=request.user, spec=spec)
            else:
                saved = grader_services.update_grader(grader=grader, spec=spec)
        except grader_services.GraderValidationError as error:
            state.place_errors(error)
            if grader is not None:
                grader.refresh_from_db()
            spec = None
    if spec is None:
        if mode == "json" and request.htmx:
            # Only the messages change: the pasted text stays in the browser and is not sent back.
            response = render(
                request,
                "experiments/_grader_spec_check.html",
                {"problems": state.json_errors(), "checked": True},
            )
            response["HX-Retarget"] = "#spec-check"
            response["HX-Reswap"] = "innerHTML"
            return response
        state.hide_secrets()
        return _render_form(request, state)
    if grader is None:
        messages.success(request, f"Grader {saved.name} created. Run it on a sample below.")
        return _redirect(request, reverse("grader-edit", args=[saved.pk]))
    if not request.htmx:
        messages.success(request, f"Grader {saved.name} saved (version {saved.version}).")
        return redirect("grader-edit", grader_id=saved.pk)
    fresh = FormState(grader=saved, mode=mode)
    fresh.saved = True
    return _render_form(request, fresh)


def grader_create(request):
    if request.method == "POST":
        return _save(request)
    mode = "json" if request.GET.get("mode") == "json" else "form"
    return _render_form(request, FormState(mode=mode))


def grader_edit(request, grader_id: int):
    grader = grader_selectors.grader_for(user=request.user, grader_id=grader_id)
    if request.method == "POST":
        return _save(request, grader=grader)
    return _render_form(
        request, FormState(grader=grader, mode="json" if request.GET.get("mode") == "json" else "form")
    )


@require_POST
def grader_validate(request):
    """The live check under the grader JSON editor."""
    text = request.POST.get("spec", "")
    stored = {}
    if request.POST.get("grader_id", "").isdigit():
        stored = (
            grader_selectors.grader_for(user=request.user, grader_id=int(request.POST["grader_id"])).secrets
            or {}
        )
    problems: list[str] = []
    summary = ""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        problems = [f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."]
    else:
        try:
            checked = grader_services.check_spec(spec, stored_secrets=stored)
        except grader_services.GraderValidationError as error:
            problems = [
                f"{path}: {message}" if path else message
                for path, msgs in error.by_path.items()
                for message in msgs
            ]
        else:
            summary = f"{checked.spec['type']} grader {checked.spec['name']!r}"
    return render(
        request,
        "experiments/_grader_spec_check.html",
        {"problems": problems, "summary": summary, "checked": bool(text)},
    )


def _run_panel_context(request, *, grader, run_form: GraderRunForm, report=None) -> dict:
    # After a run the picker keeps the dataset and item that were chosen.
    dataset_id = request.POST.get("dataset", "") if request.method == "POST" else ""
    item_id = request.POST.get("dataset_item", "") if request.method == "POST" else ""
    items = (
        grader_selectors.dataset_items_for_picker(user=request.user, dataset_id=int(dataset_id))
        if dataset_id.isdigit()
        else []
    )
    return {
        "grader": grader,
        "run_form": run_form,
        "report": report,
        "datasets": grader_selectors.datasets_for_picker(user=request.user)[:100],
        "picked_dataset": int(dataset_id) if dataset_id.isdigit() else None,
        "picked_item": int(item_id) if item_id.isdigit() else None,
        "items": items,
    }


@require_POST
def grader_run(request, grader_id: int):
    grader = grader_selectors.grader_for(user=request.user, grader_id=grader_id)
    run_form = GraderRunForm(request.POST)
    report = None
    spec_problems: list[str] = []
    if run_form.is_valid():
        try:
            report = grader_services.run_stored_grader(
                grader=grader,
                output_text=run_form.cleaned_data["output_text"],
                output_tools=run_form.cleaned_data["output_tools"],
                item=run_form.cleaned_data["item"],
                user=request.user,
            )
        except grader_services.GraderValidationError as error:
            spec_problems = [f"{path}: {message}" for path, msgs in error.by_path.items() for message in msgs]
    context = _run_panel_context(request, grader=grader, run_form=run_form, report=report)
    context["spec_problems"] = spec_problems
    if request.htmx:
        return render(request, "experiments/_grader_run.html", context)
    state = FormState(grader=grader)
    context.update(state.context())
    context["runs"] = grader_selectors.runs_using_grader(grader=grader)
    return render(request, "experiments/grader_edit.html", context)


@require_GET
def grader_dataset_items(request):
    """The <option>s of the item picker for one of the user's datasets."""
    dataset_id = request.GET.get("dataset", "")
    items = (
        grader_selectors.dataset_items_for_picker(user=request.user, dataset_id=int(dataset_id))
        if dataset_id.isdigit()
        else []
    )
    return render(
        request, "experiments/_grader_item_options.html", {"items": items, "chosen": bool(dataset_id)}
    )


@require_GET
def grader_item_json(request):
    """The item editor filled with a picked dataset item."""
    item_id = request.GET.get("dataset_item", "")
    data = (
        grader_selectors.dataset_item_data(user=request.user, item_id=int(item_id))
        if item_id.isdigit()
        else None
    )
    run_form = GraderRunForm(initial={"item": spec_text(data) if data is not None else ""})
    return render(request, "experiments/_grader_item_field.html", {"run_form": run_form})


@require_POST
def grader_delete(request, grader_id: int):
    grader = grader_selectors.grader_for(user=request.user, grader_id=grader_id)
    try:
        grader_services.delete_grader(grader=grader)
    except grader_services.GraderInUseError as exc:
        if request.htmx:
            return render(request, "experiments/_grader_delete_refused.html", {"message": str(exc)})
        messages.error(request, str(exc))
        return redirect("grader-edit", grader_id=grader.pk)
    messages.success(request, f"Grader {grader.name} deleted.")
    return _redirect(request, reverse("grader-list"))


urlpatterns = [
    path("", grader_list, name="grader-list"),
    path("new/", grader_create, name="grader-create"),
    path("validate/", grader_validate, name="grader-validate"),
    path("items/", grader_dataset_items, name="grader-dataset-items"),
    path("item/", grader_item_json, name="grader-item-json"),
    path("<int:grader_id>/", grader_edit, name="grader-edit"),
    path("<int:grader_id>/run/", grader_run, name="grader-run"),
    path("<int:grader_id>/delete/", grader_delete, name="grader-delete"),
]
