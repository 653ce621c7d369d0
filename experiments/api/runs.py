from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from .. import selectors
from ..models import Run
from .common import OwnedReadOnlyViewSet


class RunSerializer(serializers.ModelSerializer):
    class Meta:
        model = Run
        fields = [
            "id",
            "name",
            "status",
            "base_model",
            "config",
            "train_dataset",
            "eval_dataset",
            "tools",
            "grader",
            "attempt",
            "max_attempts",
            "current_step",
            "total_steps",
            "last_seq",
            "error",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class RunEventSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    kind = serializers.CharField()
    step = serializers.IntegerField(allow_null=True)
    payload = serializers.JSONField()
    time = serializers.DateTimeField(allow_null=True)


class RunViewSet(OwnedReadOnlyViewSet):
    serializer_class = RunSerializer

    def get_queryset(self):
        return selectors.runs_for(user=self.request.user).prefetch_related("tools")

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="Only events with seq greater than this.")],
        responses=RunEventSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        """The run's event log (metrics per step, status changes, log lines) after a sequence number."""
        run = self.get_object()
        try:
            after = max(0, int(request.query_params.get("after", 0)))
        except ValueError:
            after = 0
        return Response(selectors.run_events_after(run_id=run.pk, after=after, limit=5000))
