"""`manage.py rebuild_metric_rollups [RUN_ID ...]`: recompute runs' metric rollups from their points.

The write path keeps the rollups (`experiments/services/rollups.py`); rebuild them after metric
points were loaded or edited behind it (a bulk COPY, a restore, a manual fix). Without run ids,
every run that has points.
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from experiments.models import MetricPoint
from experiments.services.rollups import rebuild_rollups


class Command(BaseCommand):
    help = "Recompute metric rollups from the stored metric points (all runs with points, or the ones named)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "run_ids", nargs="*", type=int, help="Runs to rebuild (default: every run with points)."
        )

    def handle(self, *args, **options) -> None:
        run_ids = options["run_ids"] or list(
            MetricPoint.objects.order_by("run_id").values_list("run_id", flat=True).distinct()
        )
        for run_id in run_ids:
            started = time.perf_counter()
            rows = rebuild_rollups(run_id=run_id)
            self.stdout.write(f"run {run_id}: {rows} rollup rows in {time.perf_counter() - started:.1f} s")
