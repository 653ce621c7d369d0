"""New run, clone, cancel, resume: the pages and buttons that change a run's lifecycle."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from .. import selectors
from ..api.downloads import metrics_csv_response, rollouts_jsonl_response
from ..forms.runs import RunForm
from ..services import artifacts, forks, run_launch
from ..services.runs import RunStateError


def run_create(request):
    initial = {}
    source = None
    clone_of = request.GET.get("clone")
    if clone_of and clone_of.isdigit():
        source = get_object_or_404(selectors.runs_for(user=request.user), pk=int(clone_of))
        initial = RunForm.initial_from_run(source)
    form = RunForm(request.POST or None, user=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            run = run_launch.create_run(
                owner=request.user,
                name=data["name"],
                base_model=form.base_model,
                train_dataset=data["train_dataset"],
                eval_dataset=data.get("eval_dataset"),
                tools=list(data["tools"]),
                grader=data["grader"],
                config=form.config(),
                watch_config=form.watch_config(),
                environment=data.get("environment"),
                mcp_tools=form.mcp_tool_picks(),
            )
        except run_launch.RunValidationError as exc:
            _show_launch_errors(form, exc)
        else:
            messages.success(request, f"Run “{run.name}” is queued.")
            return redirect("run-detail", run_id=run.pk)
    return render(
        request, "experiments/run_form.html", {"form": form, "clone_of": clone_of, "clone_source": source}
    )


def _show_launch_errors(form: RunForm, exc: run_launch.RunValidationError) -> None:
    """The service's refusals on the form: under their field, or above the form."""
    for field, field_errors in exc.errors.items():
        for message in field_errors:
            form.add_error(field if field in form.fields else None, message)


def run_fork(request, run_id: int):
    """A new run from this run's adapter at ?step= (a checkpoint; none: the final adapter), with the
    run form pre-filled with the parent's settings to edit."""
    parent = get_object_or_404(selectors.runs_for(user=request.user), pk=run_id)
    raw_step = request.POST.get("fork_step", request.GET.get("step", ""))
    if raw_step and not raw_step.isdigit():
        raise Http404("step must be a checkpoint's step number")
    step = int(raw_step) if raw_step else None
    initial = RunForm.initial_from_run(parent)
    initial["name"] = f"{parent.name} (fork @ {step if step is not None else 'final'})"
    form = RunForm(request.POST or None, user=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            run = forks.fork_run(
                owner=request.user,
                parent=parent,
                step=step,
                name=data["name"],
                base_model=form.base_model,
                train_dataset=data["train_dataset"],
                eval_dataset=data.get("eval_dataset"),
                tools=list(data["tools"]),
                grader=data["grader"],
                # Settings the form does not show (e.g. the LoRA target modules) stay the parent's.
                config={
                    k: v
                    for k, v in parent.config.items()
                    if k not in {setting.name for setting in form.settings}
                }
                | form.config(),
                watch_config=form.watch_config(),
                environment=data.get("environment"),
                mcp_tools=form.mcp_tool_picks(),
            )
        except run_launch.RunValidationError as exc:
            _show_launch_errors(form, exc)
        else:
            messages.success(request, f"Fork “{run.name}” is queued: it starts from {parent.name}'s adapter.")
            return redirect("run-detail", run_id=run.pk)
    fork = {"parent": parent, "step": step}
    return render(request, "experiments/run_form.html", {"form": form, "fork": fork})


@require_POST
def run_cancel(request, run_id: int):
    run = get_object_or_404(selectors.runs_for(user=request.user), pk=run_id)
    try:
        run = run_launch.cancel_run(run_id=run.pk)
    except RunStateError as exc:
        messages.error(request, str(exc))
    else:
        if run.is_terminal:
            messages.info(request, "Cancelled.")
        else:
            # Tagged so that the run page drops it once the run has actually stopped.
            messages.info(
                request,
                "Cancel requested: the run stops after the current rollouts.",
                extra_tags="run-pending",
            )
    return redirect("run-detail", run_id=run_id)


@require_POST
def run_resume(request, run_id: int):
    run = get_object_or_404(selectors.runs_for(user=request.user), pk=run_id)
    try:
        run_launch.resume_run(run_id=run.pk)
    except RunStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Resumed: the run continues from its last checkpoint as a new attempt.")
    return redirect("run-detail", run_id=run_id)


def _owned_run(request, run_id: int):
    return get_object_or_404(selectors.runs_for(user=request.user), pk=run_id)


def run_actions_partial(request, run_id: int):
    """The run page's action bar alone: the page swaps it in when the run's status changes or a
    checkpoint lands, so Cancel, Resume and the downloads follow the run without a reload."""
    run = _owned_run(request, run_id)
    return render(request, "experiments/_run_actions_fragment.html", {"run": run})


def download_adapter(request, run_id: int):
    run = _owned_run(request, run_id)
    step = request.GET.get("step")
    try:
        archive, filename = artifacts.adapter_zip(
            run=run, step=int(step) if step and step.isdigit() else None
        )
    except artifacts.ArtifactMissing as exc:
        raise Http404(str(exc)) from exc
    return FileResponse(archive, as_attachment=True, filename=filename, content_type="application/zip")


def download_merged(request, run_id: int):
    run = _owned_run(request, run_id)
    try:
        archive, filename = artifacts.merged_model_zip(run=run)
    except artifacts.ArtifactMissing as exc:
        raise Http404(str(exc)) from exc
    return FileResponse(archive, as_attachment=True, filename=filename, content_type="application/zip")


@require_POST
def build_merged(request, run_id: int):
    run = _owned_run(request, run_id)
    try:
        artifacts.request_merged_model(run=run)
    except artifacts.ArtifactMissing as exc:
        messages.error(request, str(exc))
    else:
        messages.info(
            request, "Building the merged model in a worker; the download appears here when it is ready."
        )
    return redirect("run-detail", run_id=run_id)


def download_metrics_csv(request, run_id: int):
    return metrics_csv_response(_owned_run(request, run_id))


def download_rollouts_jsonl(request, run_id: int):
    return rollouts_jsonl_response(_owned_run(request, run_id))


urlpatterns = [
    path("new/", run_create, name="run-create"),
    path("<int:run_id>/fork/", run_fork, name="run-fork"),
    path("<int:run_id>/actions/", run_actions_partial, name="run-actions"),
    path("<int:run_id>/cancel/", run_cancel, name="run-cancel"),
    path("<int:run_id>/resume/", run_resume, name="run-resume"),
    path("<int:run_id>/download/adapter.zip", download_adapter, name="run-download-adapter"),
    path("<int:run_id>/download/merged.zip", download_merged, name="run-download-merged"),
    path("<int:run_id>/merged/", build_merged, name="run-build-merged"),
    path("<int:run_id>/download/metrics.csv", download_metrics_csv, name="run-download-metrics"),
    path("<int:run_id>/download/rollouts.jsonl", download_rollouts_jsonl, name="run-download-rollouts"),
]
