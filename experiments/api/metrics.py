"""Run metrics over HTTP: the points stored after a seq (gap fill), and downsampled series for charts.

GET /api/v1/runs/{id}/metrics/?after=<seq>
GET /api/v1/runs/{id}/series/?keys=a,b&max_points=2000&x=step
"""

from __future__ import annotations

import json

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from .. import selectors
from ..selectors.metrics import (
    DEFAULT_MAX_POINTS,
    MAX_POINTS_LIMIT,
    X_AXES,
    metric_keys,
    metric_series,
    metrics_after_json,
)

METRICS_PAGE = 5000


class MetricEventSerializer(serializers.Serializer):
    seq = serializers.IntegerField(help_text="The run event that carried these points.")
    step = serializers.IntegerField()
    time = serializers.DateTimeField()
    metrics = serializers.DictField(child=serializers.FloatField(), help_text="{metric key: value}")


class MetricsAfterSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    last_seq = serializers.IntegerField(help_text="The seq of the last event returned (or `after`).")
    complete = serializers.BooleanField(help_text="False when more events follow: ask again after last_seq.")
    events = MetricEventSerializer(many=True)


class SeriesSerializer(serializers.Serializer):
    x = serializers.ListField(
        child=serializers.JSONField(),
        help_text="Steps, samples seen, ISO 8601 times or seconds since the start.",
    )
    y = serializers.ListField(child=serializers.FloatField())
    step = serializers.ListField(child=serializers.IntegerField())


class RunSeriesSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    x_axis = serializers.ChoiceField(choices=X_AXES)
    max_points = serializers.IntegerField()
    last_seq = serializers.IntegerField(help_text="Stream events after this seq to extend the series live.")
    keys = serializers.ListField(child=serializers.CharField(), help_text="Every metric key the run has.")
    series = serializers.DictField(child=SeriesSerializer())


class SeriesQuerySerializer(serializers.Serializer):
    keys = serializers.CharField(required=False, allow_blank=True)
    max_points = serializers.IntegerField(required=False, min_value=3, max_value=MAX_POINTS_LIMIT)
    x = serializers.ChoiceField(choices=X_AXES, required=False)
    step_min = serializers.IntegerField(required=False)
    step_max = serializers.IntegerField(required=False)


def _visible_run(request, run_id: int):
    return get_object_or_404(
        selectors.runs_for(user=request.user).select_related(None).only("pk", "last_seq"), pk=run_id
    )


class RunMetricsView(GenericAPIView):
    """Metric points stored after a sequence number, one entry per step event."""

    serializer_class = MetricsAfterSerializer

    @extend_schema(
        operation_id="runs_metrics_after",
        parameters=[
            OpenApiParameter("after", int, description="Only points of events with seq greater than this."),
        ],
        responses=MetricsAfterSerializer,
    )
    def get(self, request, run_id: int):
        run = _visible_run(request, run_id)
        try:
            after = max(0, int(request.query_params.get("after", 0)))
        except ValueError:
            raise ValidationError({"after": "A whole number (the last seq you hold)."}) from None
        # A long live run's points, asked again and again by its watchers: written as JSON text from
        # cached blocks, not built as objects and rendered each time.
        events, count, last_seq = metrics_after_json(
            run_id=run.pk, after_seq=after, last_seq=run.last_seq, limit=METRICS_PAGE
        )
        body = (
            f'{{"run":{run.pk},"last_seq":{last_seq},"complete":{"true" if count < METRICS_PAGE else "false"},'
            f'"events":[{events}]}}'
        )
        if isinstance(request.accepted_renderer, JSONRenderer):
            return HttpResponse(body, content_type="application/json")
        return Response(json.loads(body))  # the browsable API


class RunSeriesView(GenericAPIView):
    """Downsampled metric series for charts: per bucket of steps the minimum, the maximum and the
    last point are kept (never a random sample), at most `max_points` points per series."""

    serializer_class = RunSeriesSerializer

    @extend_schema(
        operation_id="runs_metric_series",
        parameters=[
            OpenApiParameter(
                "keys", str, description="Comma-separated metric keys; all of the run's when left out."
            ),
            OpenApiParameter(
                "max_points", int, description=f"Points per series (default {DEFAULT_MAX_POINTS})."
            ),
            OpenApiParameter("x", str, enum=list(X_AXES), description="The x axis (default step)."),
            OpenApiParameter("step_min", int, description="Only steps from this one."),
            OpenApiParameter("step_max", int, description="Only steps up to this one."),
        ],
        responses=RunSeriesSerializer,
    )
    def get(self, request, run_id: int):
        run = _visible_run(request, run_id)
        query = SeriesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        all_keys = metric_keys(run.pk)
        requested = [key.strip() for key in params.get("keys", "").split(",") if key.strip()]
        keys = requested or all_keys
        result = metric_series(
            run_ids=[run.pk],
            keys=keys,
            max_points=params.get("max_points", DEFAULT_MAX_POINTS),
            x_axis=params.get("x", "step"),
            step_min=params.get("step_min"),
            step_max=params.get("step_max"),
        )
        data = result["runs"][run.pk]
        return Response(
            {
                "run": run.pk,
                "x_axis": result["x_axis"],
                "max_points": result["max_points"],
                "last_seq": data["last_seq"],
                "keys": all_keys,
                "series": data["series"],
            }
        )


urlpatterns = [
    path("runs/<int:run_id>/metrics/", RunMetricsView.as_view(), name="run-metrics"),
    path("runs/<int:run_id>/series/", RunSeriesView.as_view(), name="run-series"),
]
