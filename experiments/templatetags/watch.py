"""`{% run_watch run %}`: the run page's reward-hacking watch panel (and the paused banner)."""

from __future__ import annotations

from django import template

from ..models import ReadinessReport
from ..selectors.readiness import run_watch_summary

register = template.Library()


@register.inclusion_tag("experiments/_watch_panel.html")
def run_watch(run):
    return {
        "run": run,
        "watch": run_watch_summary(run=run),
        "baseline_report_id": ReadinessReport.objects.filter(run=run).values_list("pk", flat=True).first(),
    }


@register.inclusion_tag("experiments/_watch_banner.html")
def run_watch_banner(run):
    return {"run": run}
