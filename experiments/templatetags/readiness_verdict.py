"""`{{ report|verdict_level }}`: the verdict level a readiness report is shown with."""

from __future__ import annotations

from django import template

from ..selectors.readiness import displayed_verdict

register = template.Library()


@register.filter
def verdict_level(report) -> str:
    return displayed_verdict(report.results or {}).get("level", "")
