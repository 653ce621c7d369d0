"""Readiness reports and grader audits over the REST API (/api/v1/readiness/, /api/v1/audits/)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from ..models import Dataset, Grader, GraderAudit, ReadinessReport, Run, Tool
from ..selectors import readiness as readiness_selectors
from ..services import audit as audit_services
from ..services import readiness as readiness_services
from .common import OwnedReadOnlyViewSet
from .runs import OwnedPrimaryKeyField


class ReadinessReportSerializer(serializers.ModelSerializer):
    class Meta:
        model = ReadinessReport
        fields = [
            "id",
            "name",
            "status",
            "base_model",
            "dataset",
            "tools",
            "grader",
            "grader_version",
            "run",
            "k",
            "max_items",
            "config",
            "results",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ReadinessCreateSerializer(serializers.Serializer):
    base_model = serializers.CharField(
        max_length=500, help_text="Hub id, local path, .gguf path, or `bundled:smollm2-135m-instruct`."
    )
    dataset = OwnedPrimaryKeyField(queryset=Dataset.objects.all())
    tools = OwnedPrimaryKeyField(queryset=Tool.objects.all(), many=True, required=False)
    grader = OwnedPrimaryKeyField(queryset=Grader.objects.all())
    k = serializers.IntegerField(default=4, min_value=2, max_value=64, help_text="Rollouts per item.")
    max_items = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Only the first N items (a subset)."
    )
    config = serializers.DictField(
        required=False,
        default=dict,
        help_text="Sampling settings: max_turns, max_new_tokens_per_turn, max_tokens_per_rollout, "
        "temperature, top_p, seed.",
    )


class ReadinessReportViewSet(mixins.CreateModelMixin, OwnedReadOnlyViewSet):
    serializer_class = ReadinessReportSerializer

    def get_queryset(self):
        return readiness_selectors.reports_for(user=self.request.user).prefetch_related("tools")

    def get_serializer_class(self):
        return ReadinessCreateSerializer if self.action == "create" else ReadinessReportSerializer

    @extend_schema(request=ReadinessCreateSerializer, responses={201: ReadinessReportSerializer})
    def create(self, request, *args, **kwargs):
        """Sample k base-model rollouts per item and grade them (a worker on the `train` queue)."""
        serializer = ReadinessCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            report = readiness_services.create_readiness_report(
                owner=request.user,
                base_model=data["base_model"],
                dataset=data["dataset"],
                tools=data.get("tools", []),
                grader=data["grader"],
                k=data["k"],
                max_items=data.get("max_items"),
                config=data.get("config") or {},
            )
        except readiness_services.ReadinessError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        return Response(ReadinessReportSerializer(report).data, status=status.HTTP_201_CREATED)


class GraderAuditSerializer(serializers.ModelSerializer):
    class Meta:
        model = GraderAudit
        fields = [
            "id",
            "run",
            "grader",
            "grader_version",
            "sample_size",
            "status",
            "results",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields


class GraderAuditCreateSerializer(serializers.Serializer):
    run = OwnedPrimaryKeyField(queryset=Run.objects.all())
    grader = OwnedPrimaryKeyField(queryset=Grader.objects.all(), help_text="The second grader.")
    sample_size = serializers.IntegerField(
        default=10,
        min_value=1,
        max_value=audit_services.MAX_SAMPLE,
        help_text="Of each: flagged and unflagged.",
    )


class GraderAuditViewSet(mixins.CreateModelMixin, OwnedReadOnlyViewSet):
    serializer_class = GraderAuditSerializer

    def get_queryset(self):
        return GraderAudit.objects.visible_to(self.request.user).select_related("grader")

    def get_serializer_class(self):
        return GraderAuditCreateSerializer if self.action == "create" else GraderAuditSerializer

    @extend_schema(request=GraderAuditCreateSerializer, responses={201: GraderAuditSerializer})
    def create(self, request, *args, **kwargs):
        """Rescore a sample of the run's flagged and unflagged rollouts with a second grader."""
        serializer = GraderAuditCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            audit = audit_services.create_audit(
                owner=request.user, run=data["run"], grader=data["grader"], sample_size=data["sample_size"]
            )
        except audit_services.AuditError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        return Response(GraderAuditSerializer(audit).data, status=status.HTTP_201_CREATED)
