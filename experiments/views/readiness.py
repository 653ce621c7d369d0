"""Readiness reports (the "Check readiness" button and each run's baseline) and grader audits.

Included at the site root: `path("", include("experiments.views.readiness"))`. Thin: services
write, selectors read, the templates render the stored results.
"""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from .. import selectors
from ..forms.readiness import AuditForm, ReadinessForm
from ..models import GraderAudit
from ..selectors import readiness as readiness_selectors
from ..services import audit as audit_services
from ..services import readiness as readiness_services


def readiness_list(request):
    form = ReadinessForm(request.POST or None, user=request.user, initial=_initial(request))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            report = readiness_services.create_readiness_report(
                owner=request.user,
                base_model=form.base_model(),
                dataset=data["dataset"],
                tools=list(data["tools"]),
                grader=data["grader"],
                k=data["k"],
                max_items=data["max_items"],
                config=form.sampling_config(),
            )
        except readiness_services.ReadinessError as exc:
            form.add_error(None, str(exc))
        else:
            messages.info(request, "Readiness check queued: a worker samples the base model.")
            return redirect("readiness-detail", report_id=report.pk)
    reports = list(readiness_selectors.reports_for(user=request.user)[:100])
    for report in reports:
        curve = (report.results or {}).get("best_of_k") or []
        report.curve_ends = (curve[0]["value"], curve[-1]["value"]) if curve else None
    return render(request, "experiments/readiness_list.html", {"form": form, "reports": reports})


def _initial(request) -> dict:
    initial = {}
    for key in ("dataset", "grader"):
        if request.GET.get(key, "").isdigit():
            initial[key] = int(request.GET[key])
    return initial


def readiness_detail(request, report_id: int):
    report = get_object_or_404(readiness_selectors.reports_for(user=request.user), pk=report_id)
    context = readiness_selectors.report_page(report=report, user=request.user)
    return render(request, "experiments/readiness_detail.html", context)


def run_audits(request, run_id: int):
    run = get_object_or_404(selectors.runs_for(user=request.user), pk=run_id)
    form = AuditForm(request.POST or None, user=request.user, run=run)
    if request.method == "POST" and form.is_valid():
        try:
            audit = audit_services.create_audit(
                owner=request.user,
                run=run,
                grader=form.cleaned_data["grader"],
                sample_size=form.cleaned_data["sample_size"],
            )
        except audit_services.AuditError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("audit-detail", audit_id=audit.pk)
    context = {
        "run": run,
        "form": form,
        "audits": readiness_selectors.audits_for(user=request.user, run=run),
        "watch": readiness_selectors.run_watch_summary(run=run),
    }
    return render(request, "experiments/readiness_audits.html", context)


def audit_detail(request, audit_id: int):
    audit = get_object_or_404(
        GraderAudit.objects.visible_to(request.user).select_related("run", "grader"), pk=audit_id
    )
    rows = sorted(
        (audit.results or {}).get("rows", []), key=lambda row: (not row["disagree"], not row["flagged"])
    )
    return render(request, "experiments/readiness_audit.html", {"audit": audit, "rows": rows})


@require_POST
def audit_rerun(request, audit_id: int):
    audit = get_object_or_404(GraderAudit.objects.visible_to(request.user), pk=audit_id)
    fresh = audit_services.create_audit(
        owner=request.user, run=audit.run, grader=audit.grader, sample_size=audit.sample_size
    )
    return redirect("audit-detail", audit_id=fresh.pk)


urlpatterns = [
    path("readiness/", readiness_list, name="readiness-list"),
    path("readiness/<int:report_id>/", readiness_detail, name="readiness-detail"),
    path("runs/<int:run_id>/audits/", run_audits, name="run-audits"),
    path("audits/<int:audit_id>/", audit_detail, name="audit-detail"),
    path("audits/<int:audit_id>/rerun/", audit_rerun, name="audit-rerun"),
]
