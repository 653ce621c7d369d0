"""The hosted grader API shape: `POST /api/v1/graders/run` and `POST /api/v1/graders/validate`.

Scripts written against the hosted service's `fine_tuning/alpha/graders/{run,validate}` switch by
changing their base URL: the same request bodies, the same answers (both paths are served, with or
without a trailing slash). `validate` also keeps rftweb's own `{"spec"}` form.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from ..services import graders as grader_services
from .graders import GraderValidateResultSerializer, validate_spec_payload


class HostedRunRequestSerializer(serializers.Serializer):
    grader = serializers.JSONField(
        help_text="Grader JSON as the hosted API takes it (any type, multi included)."
    )
    model_sample = serializers.CharField(
        allow_blank=True,
        trim_whitespace=False,
        help_text="The model's output: {{sample.output_text}} (and {{sample.output_json}} when it is JSON).",
    )
    item = serializers.JSONField(required=False, default=dict, help_text="The dataset row: {{item.x}}.")

    def validate_item(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        return value


class HostedErrorsSerializer(serializers.Serializer):
    formula_parse_error = serializers.BooleanField()
    sample_parse_error = serializers.BooleanField()
    truncated_observation_error = serializers.BooleanField()
    unresponsive_reward_error = serializers.BooleanField()
    invalid_variable_error = serializers.BooleanField()
    other_error = serializers.BooleanField()
    python_grader_server_error = serializers.BooleanField()
    python_grader_server_error_type = serializers.CharField(allow_null=True)
    python_grader_runtime_error = serializers.BooleanField()
    python_grader_runtime_error_details = serializers.CharField(allow_null=True)
    model_grader_server_error = serializers.BooleanField()
    model_grader_refusal_error = serializers.BooleanField()
    model_grader_parse_error = serializers.BooleanField()
    model_grader_server_error_details = serializers.CharField(allow_null=True)


class HostedErrorMessageSerializer(serializers.Serializer):
    grader = serializers.CharField()
    type = serializers.CharField()
    message = serializers.CharField()


class HostedMetadataSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    errors = HostedErrorsSerializer()
    execution_time = serializers.FloatField(help_text="Seconds.")
    scores = serializers.DictField(child=serializers.FloatField(), help_text="Every (sub-)grader's score.")
    token_usage = serializers.DictField(
        child=serializers.IntegerField(), allow_null=True, help_text="What judge/embedding models reported."
    )
    sampled_model_name = serializers.CharField(allow_null=True)
    passed = serializers.DictField(
        child=serializers.BooleanField(), help_text="Per grader with a pass_threshold: reached it or not."
    )
    error_messages = HostedErrorMessageSerializer(many=True, help_text="rftweb's detail of each error.")


class HostedRunResponseSerializer(serializers.Serializer):
    reward = serializers.FloatField(allow_null=True, help_text="null when grading failed (never a silent 0).")
    metadata = HostedMetadataSerializer()
    sub_rewards = serializers.DictField(
        child=serializers.FloatField(), help_text="A multi grader's sub-graders."
    )
    model_grader_token_usage_per_model = serializers.DictField(child=serializers.DictField())


class HostedValidateRequestSerializer(serializers.Serializer):
    grader = serializers.JSONField(required=False, help_text="Grader JSON (the hosted form).")
    spec = serializers.JSONField(
        required=False, help_text="Grader JSON (rftweb's form; answers differently)."
    )

    def validate(self, attrs):
        if ("grader" in attrs) == ("spec" in attrs):
            raise serializers.ValidationError("Send either `grader` (hosted form) or `spec`.")
        return attrs


class HostedValidateResponseSerializer(serializers.Serializer):
    grader = serializers.JSONField(help_text="The grader as validated (secret values masked).")


def _error_response(error: grader_services.GraderValidationError) -> Response:
    messages = [
        f"{path}: {text}" if path else text for path, texts in error.by_path.items() for text in texts
    ]
    first_path = next(iter(error.by_path), "")
    return Response(
        {
            "error": {
                "message": "; ".join(messages),
                "type": "invalid_request_error",
                "param": f"grader.{first_path}" if first_path else "grader",
                "errors": {path or "grader": texts for path, texts in error.by_path.items()},
            }
        },
        status=status.HTTP_400_BAD_REQUEST,
    )


HOSTED_ERROR = OpenApiResponse(
    description='{"error": {"message", "type", "param", "errors"}}: the grader is invalid.'
)


class HostedGraderRunView(APIView):
    @extend_schema(
        operation_id="graders_run_hosted",
        request=HostedRunRequestSerializer,
        responses={
            200: HostedRunResponseSerializer,
            400: HOSTED_ERROR,
            429: OpenApiResponse(description="Past the per-user grader-run rate limit (Retry-After)."),
        },
        tags=["graders"],
    )
    def post(self, request):
        """Run a grader on one model sample (the hosted `graders/run` request and answer); nothing is saved."""
        serializer = HostedRunRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            answer = grader_services.run_hosted(
                grader_spec=data["grader"],
                model_sample=data["model_sample"],
                item=data["item"],
                user=request.user,
            )
        except grader_services.GraderValidationError as error:
            return _error_response(error)
        return Response(HostedRunResponseSerializer(answer).data)


class HostedGraderValidateView(APIView):
    @extend_schema(
        operation_id="graders_validate",
        request=HostedValidateRequestSerializer,
        responses={
            200: PolymorphicProxySerializer(
                component_name="GraderValidateAnswer",
                serializers=[HostedValidateResponseSerializer, GraderValidateResultSerializer],
                resource_type_field_name=None,
            ),
            400: HOSTED_ERROR,
        },
        tags=["graders"],
    )
    def post(self, request):
        """Check grader JSON without saving it. `{"grader"}` answers as the hosted API ({"grader"} or a
        400 error naming the field); `{"spec"}` answers {valid, type, name, errors by field path}."""
        serializer = HostedValidateRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "spec" in data:
            return Response(validate_spec_payload(data["spec"]))
        try:
            checked = grader_services.check_spec(data["grader"])
        except grader_services.GraderValidationError as error:
            return _error_response(error)
        return Response({"grader": grader_services.mask_checked(checked)})
