"""What the dashboard says before a demo starts: the time per step measured on this machine."""

from __future__ import annotations

from statistics import median

from ..models import MetricPoint

RECENT_STEPS = 50


def measured_step_seconds(*, user, base_model: str, config_steps: int | None = None) -> dict | None:
    """Median step time (s) of this user's latest steps on `base_model`, with how many steps it is
    from; None when no such step was measured yet. The steps are those of earlier demo runs."""
    values = list(
        MetricPoint.objects.filter(run__owner=user, run__base_model=base_model, key="step_time")
        .order_by("-wall_time")
        .values_list("value", flat=True)[:RECENT_STEPS]
    )
    if not values:
        return None
    seconds = median(values)
    return {
        "seconds": seconds,
        "steps": len(values),
        "total_minutes": seconds * config_steps / 60 if config_steps else None,
    }
