from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from ..models import Grader
from ..selectors import graders as grader_selectors
from ..services import graders as grader_services
from .common import OwnedModelViewSet
from .tools import Conflict


class GraderSerializer(serializers.ModelSerializer):
    spec = serializers.JSONField(
        help_text=(
            "Grader JSON in the widely used shape (string_check, text_similarity, set_match, score_model, "
            "label_model, python, endpoint, multi). API keys, header values and signing secrets are write-only: they "
            "are stored encrypted and read back masked (••••1234); sending a masked or empty value keeps "
            "the stored one."
        )
    )

    needs = serializers.SerializerMethodField(
        help_text=(
            'What the server lacks for this grader to score, e.g. "needs a judge endpoint: ..." for a '
            "score_model or label_model without a judge; empty when it can score. Runs using a grader "
            "with needs are refused."
        )
    )

    class Meta:
        model = Grader
        fields = ["id", "name", "type", "spec", "needs", "version", "created_at", "updated_at"]
        read_only_fields = ["id", "name", "type", "needs", "version", "created_at", "updated_at"]

    def get_needs(self, instance: Grader) -> list[str]:
        return grader_services.grader_needs(instance)

    def to_representation(self, instance: Grader) -> dict:
        data = super().to_representation(instance)
        data["spec"] = grader_services.masked_spec(instance)
        return data

    def _checked(self, call):
        try:
            return call()
        except grader_services.GraderValidationError as error:
            raise serializers.ValidationError(
                {
                    "spec": [
                        f"{path}: {message}" if path else message
                        for path, msgs in error.by_path.items()
                        for message in msgs
                    ]
                }
            ) from error

    def create(self, validated_data: dict) -> Grader:
        owner = validated_data["owner"]
        return self._checked(lambda: grader_services.create_grader(owner=owner, spec=validated_data["spec"]))

    def update(self, instance: Grader, validated_data: dict) -> Grader:
        if "spec" not in validated_data:
            return instance
        return self._checked(
            lambda: grader_services.update_grader(grader=instance, spec=validated_data["spec"])
        )


class GraderValidateResultSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    type = serializers.CharField(allow_null=True)
    name = serializers.CharField(allow_null=True)
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text='Messages by field path, e.g. {"graders.a.reference": ["required"]}; "spec" for the whole.',
    )


def validate_spec_payload(spec) -> dict:
    """rftweb's own validate answer: {valid, type, name, errors by field path}."""
    try:
        checked = grader_services.check_spec(spec)
    except grader_services.GraderValidationError as error:
        payload = {
            "valid": False,
            "type": None,
            "name": None,
            "errors": {path or "spec": msgs for path, msgs in error.by_path.items()},
        }
    else:
        payload = {
            "valid": True,
            "type": checked.spec["type"],
            "name": checked.spec.get("name") or grader_services.derived_multi_name(checked.spec),
            "errors": {},
        }
    return GraderValidateResultSerializer(payload).data


class GraderRunSerializer(serializers.Serializer):
    output_text = serializers.CharField(
        allow_blank=True, trim_whitespace=False, help_text="The model's final answer."
    )
    output_tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        default=list,
        help_text="OpenAI-shaped tool calls: [{id, type: function, function: {name, arguments}}].",
    )
    item = serializers.DictField(required=False, default=dict, help_text="The dataset row ({{item.x}}).")
    dataset_item = serializers.IntegerField(
        required=False, help_text="Instead of `item`: the id of an item of one of your datasets."
    )


class GraderErrorSerializer(serializers.Serializer):
    grader = serializers.CharField()
    type = serializers.CharField()
    message = serializers.CharField()


class GraderRunResultSerializer(serializers.Serializer):
    score = serializers.FloatField(allow_null=True, help_text="None when grading failed (never silently 0).")
    sub_scores = serializers.DictField(child=serializers.FloatField())
    errors = GraderErrorSerializer(many=True)
    errors_by_type = serializers.DictField(child=serializers.IntegerField())
    latency_ms = serializers.FloatField()
    trace_id = serializers.CharField()


@extend_schema_view(
    destroy=extend_schema(responses={204: None, 409: OpenApiResponse(description="The grader scores a run.")})
)
class GraderViewSet(OwnedModelViewSet):
    """The user's graders. Editing the spec bumps `version`."""

    serializer_class = GraderSerializer

    def get_queryset(self):
        return grader_selectors.graders_for(user=self.request.user)

    def perform_destroy(self, instance: Grader) -> None:
        try:
            grader_services.delete_grader(grader=instance)
        except grader_services.GraderInUseError as exc:
            raise Conflict(str(exc)) from exc

    @extend_schema(request=GraderRunSerializer, responses=GraderRunResultSerializer)
    @action(detail=True, methods=["post"])
    def run(self, request, pk=None):
        """Score one sample answer against one item with this grader, as a rollout is scored."""
        grader = self.get_object()
        serializer = GraderRunSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        item = data["item"]
        if "dataset_item" in data:
            item = grader_selectors.dataset_item_data(user=request.user, item_id=data["dataset_item"])
            if item is None:
                raise serializers.ValidationError({"dataset_item": "No such item in your datasets."})
        try:
            report = grader_services.run_stored_grader(
                grader=grader,
                output_text=data["output_text"],
                output_tools=data["output_tools"],
                item=item,
                user=request.user,
            )
        except grader_services.GraderValidationError as error:
            raise serializers.ValidationError(
                {"spec": [f"{path}: {message}" for path, msgs in error.by_path.items() for message in msgs]}
            ) from error
        return Response(GraderRunResultSerializer(report.as_dict()).data)
