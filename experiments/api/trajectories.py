"""Rollouts over HTTP: a filtered list with keyset pagination, and one rollout by its trace id.

GET /api/v1/trajectories/?run=&step=&split=&min_reward=&max_reward=&has_error=&tool=&flagged=&q=&cursor=&limit=
GET /api/v1/trajectories/{trace_id}/
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from ..models import Trajectory
from ..selectors.trajectories import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    TABLE_FIELDS,
    CursorError,
    RolloutFilters,
    rollout_detail,
    rollout_page,
)


class TrajectoryRowSerializer(serializers.ModelSerializer):
    run = serializers.IntegerField(source="run_id")

    class Meta:
        model = Trajectory
        fields = [name for name in TABLE_FIELDS if name not in ("id", "run_id")]
        fields.insert(1, "run")
        read_only_fields = fields


class TrajectorySerializer(TrajectoryRowSerializer):
    class Meta(TrajectoryRowSerializer.Meta):
        fields = [*TrajectoryRowSerializer.Meta.fields, "messages", "final_answer", "environment"]
        read_only_fields = fields


class TrajectoryPageSerializer(serializers.Serializer):
    results = TrajectoryRowSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True, help_text="Pass as `cursor` for the next page.")
    next = serializers.URLField(allow_null=True, help_text="The next page's URL, or null on the last page.")


class TrajectoryQuerySerializer(serializers.Serializer):
    run = serializers.IntegerField(required=False, help_text="Only this run's rollouts.")
    step = serializers.IntegerField(required=False)
    split = serializers.ChoiceField(choices=Trajectory.Split.choices, required=False)
    min_reward = serializers.FloatField(required=False)
    max_reward = serializers.FloatField(required=False)
    has_error = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="A tool error, a grader error or an error finish.",
    )
    tool = serializers.CharField(required=False, help_text="Only rollouts that called this tool.")
    flagged = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="Flagged by the reward-hacking watch."
    )
    q = serializers.CharField(required=False, help_text="A trace id, or a fragment of one.")
    cursor = serializers.CharField(required=False, help_text="The `next_cursor` of the previous page.")
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_PAGE_SIZE, default=DEFAULT_PAGE_SIZE
    )

    def filters(self) -> RolloutFilters:
        data = self.validated_data
        return RolloutFilters(
            run_id=data.get("run"),
            step=data.get("step"),
            split=data.get("split"),
            min_reward=data.get("min_reward"),
            max_reward=data.get("max_reward"),
            has_error=data.get("has_error"),
            tool=data.get("tool"),
            flagged=data.get("flagged"),
            trace_id=data.get("q"),
        )


class TrajectoryViewSet(viewsets.GenericViewSet):
    """Rollouts of the runs you can see. The list pages with a cursor on (run, step, id): follow
    `next` (or pass `next_cursor` as `cursor`) until it is null."""

    serializer_class = TrajectorySerializer
    lookup_field = "trace_id"
    lookup_value_regex = r"[A-Za-z0-9_\-]+"
    pagination_class = None
    queryset = Trajectory.objects.none()  # for the schema; reads go through the selectors

    @extend_schema(parameters=[TrajectoryQuerySerializer], responses=TrajectoryPageSerializer)
    def list(self, request):
        query = TrajectoryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        try:
            page = rollout_page(
                user=request.user,
                filters=query.filters(),
                cursor=query.validated_data.get("cursor"),
                limit=query.validated_data["limit"],
            )
        except CursorError as error:
            raise ValidationError({"cursor": str(error)}) from None
        next_url = None
        if page.next_cursor:
            params = request.query_params.copy()
            params["cursor"] = page.next_cursor
            next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params, doseq=True)
        return Response(
            {
                "results": TrajectoryRowSerializer(page.rows, many=True).data,
                "next_cursor": page.next_cursor,
                "next": next_url,
            }
        )

    @extend_schema(responses=TrajectorySerializer)
    def retrieve(self, request, trace_id: str | None = None):
        rollout = rollout_detail(user=request.user, trace_id=trace_id or "")
        if rollout is None:
            raise Http404
        return Response(TrajectorySerializer(rollout).data)
