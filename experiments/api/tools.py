from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.response import Response

from ..fields import mask_secret
from ..models import Tool
from ..outbound import check_outbound_url
from ..selectors import tools as tool_selectors
from ..services import tools as tool_services
from .common import OwnedModelViewSet


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object is in use."
    default_code = "conflict"


def as_drf_error(error: DjangoValidationError) -> serializers.ValidationError:
    if hasattr(error, "error_dict"):
        return serializers.ValidationError(error.message_dict)
    return serializers.ValidationError({"non_field_errors": error.messages})


class ToolSerializer(serializers.ModelSerializer):
    # The outbound URL rule (http(s) only, checked as when the tool is called), not URLField's.
    url = serializers.CharField(
        max_length=2000,
        validators=[check_outbound_url],
        help_text="The endpoint: an absolute http:// or https:// URL without credentials.",
    )
    # Header values and the signing secret are write-only: they are never sent back, only masked.
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=True),
        write_only=True,
        required=False,
        help_text=(
            "Extra request headers (name -> value). On update the dict replaces the header list; "
            "an empty value keeps the stored value of that header."
        ),
    )
    signing_secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="HMAC secret for X-RFT-Signature. Empty or absent on update: the stored secret is kept.",
    )
    clear_signing_secret = serializers.BooleanField(
        write_only=True, required=False, default=False, help_text="Remove the stored signing secret."
    )
    server_url = serializers.CharField(
        write_only=True,
        required=False,
        help_text="Instead of `url`, as agent-RFT tool definitions name it.",
    )
    headers_masked = serializers.SerializerMethodField(
        help_text="Header names with masked values (••••1234)."
    )
    signing_secret_masked = serializers.SerializerMethodField()

    class Meta:
        model = Tool
        fields = [
            "id",
            "name",
            "description",
            "parameters",
            "url",
            "server_url",
            "headers",
            "headers_masked",
            "signing_secret",
            "signing_secret_masked",
            "clear_signing_secret",
            "timeout_s",
            "max_response_bytes",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def to_internal_value(self, data):
        # Agent-RFT tool definitions name the endpoint `server_url`.
        if hasattr(data, "keys") and "server_url" in data and "url" not in data:
            data = {**data, "url": data["server_url"]}
            data.pop("server_url")
        return super().to_internal_value(data)

    def get_headers_masked(self, tool: Tool) -> dict[str, str]:
        return {name: mask_secret(value) for name, value in (tool.headers or {}).items()}

    def get_signing_secret_masked(self, tool: Tool) -> str:
        return mask_secret(tool.signing_secret)

    def validate_name(self, value: str) -> str:
        owner = self.context["request"].user
        clash = Tool.objects.filter(owner=owner, name=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(f"You already have a tool named {value!r}.")
        return value

    def validate_parameters(self, value):
        problems = tool_services.schema_problems(value)
        if problems:
            raise serializers.ValidationError(problems)
        return value

    def create(self, validated_data: dict) -> Tool:
        validated_data.pop("clear_signing_secret", None)
        try:
            return tool_services.create_tool(**validated_data)
        except DjangoValidationError as error:
            raise as_drf_error(error) from error

    def update(self, instance: Tool, validated_data: dict) -> Tool:
        try:
            return tool_services.update_tool(tool=instance, **validated_data)
        except DjangoValidationError as error:
            raise as_drf_error(error) from error


class ToolTrySerializer(serializers.Serializer):
    arguments = serializers.JSONField(
        help_text='The arguments the model would write: a JSON object (or its JSON text), e.g. {"pattern": "TODO"}.'
    )
    item = serializers.DictField(
        required=False, default=dict, help_text="A dataset row, sent as `item` (optional)."
    )

    def validate_arguments(self, value):
        if isinstance(value, str):
            return value  # raw JSON text, sent as the model wrote it (invalid JSON is reported as such)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Arguments are a JSON object.")
        return value


class SentRequestSerializer(serializers.Serializer):
    method = serializers.CharField()
    url = serializers.CharField(help_text="scheme://host:port of the endpoint.")
    headers = serializers.DictField(child=serializers.CharField(), help_text="Secret header values masked.")
    body = serializers.JSONField(help_text="The exact JSON body (agent-RFT function_call).")


class ToolTryResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    status_code = serializers.IntegerField(allow_null=True)
    latency_ms = serializers.FloatField()
    output = serializers.CharField(help_text="Exactly what the model would read.")
    error_type = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    trace_id = serializers.CharField()
    request = SentRequestSerializer()
    argument_warnings = serializers.ListField(child=serializers.CharField())


class ToolImportSerializer(serializers.Serializer):
    definition = serializers.JSONField(help_text="An OpenAI function definition (either shape).")


class ToolListImportSerializer(serializers.Serializer):
    tools = serializers.ListField(
        child=serializers.JSONField(),
        help_text=(
            'The tool list of an agent-RFT job: [{"name", "server_url", "headers"}, ...] (optionally with '
            '"description" and "parameters"). The body may also be the bare JSON array.'
        ),
    )


class ToolImportResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    parameters = serializers.JSONField()
    url = serializers.CharField(required=False, help_text="The definition's server_url, when it has one.")


@extend_schema_view(
    destroy=extend_schema(
        responses={204: None, 409: OpenApiResponse(description="The tool is used by a run.")}
    )
)
class ToolViewSet(OwnedModelViewSet):
    """The user's tools (OpenAI-style function schemas + an HTTP endpoint)."""

    serializer_class = ToolSerializer

    def get_queryset(self):
        return tool_selectors.tools_for(user=self.request.user)

    def perform_destroy(self, instance: Tool) -> None:
        try:
            tool_services.delete_tool(tool=instance)
        except tool_services.ToolInUseError as exc:
            raise Conflict(str(exc)) from exc

    @extend_schema(request=ToolTrySerializer, responses=ToolTryResultSerializer)
    @action(detail=True, methods=["post"], url_path="try")
    def try_call(self, request, pk=None):
        """Send one call exactly as a rollout would (body, X-RFT-Rollout-Id, signature) and report it."""
        tool = self.get_object()
        serializer = ToolTrySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        arguments = serializer.validated_data["arguments"]
        result = tool_services.try_tool(
            tool=tool, arguments=arguments, item=serializer.validated_data["item"], user=request.user
        )
        payload = tool_services.try_result_as_dict(result)
        payload["argument_warnings"] = (
            tool_services.arguments_problems(tool=tool, arguments=arguments)
            if isinstance(arguments, dict)
            else []
        )
        return Response(ToolTryResultSerializer(payload).data)

    @extend_schema(request=ToolListImportSerializer, responses={201: ToolSerializer(many=True)})
    @action(detail=False, methods=["post"], url_path="import-list")
    def import_list(self, request):
        """Register every tool of an agent-RFT job's tool list at once (all or none)."""
        data = request.data
        serializer = ToolListImportSerializer(data={"tools": data} if isinstance(data, list) else data)
        serializer.is_valid(raise_exception=True)
        try:
            tools = tool_services.import_tool_list(
                owner=request.user, definitions=serializer.validated_data["tools"]
            )
        except DjangoValidationError as error:
            raise as_drf_error(error) from error
        context = self.get_serializer_context()
        return Response(ToolSerializer(tools, many=True, context=context).data, status=201)

    @extend_schema(request=ToolImportSerializer, responses=ToolImportResultSerializer)
    @action(detail=False, methods=["post"], url_path="import")
    def import_definition(self, request):
        """Parse an OpenAI function definition into name, description and parameters (nothing is saved)."""
        serializer = ToolImportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            parsed = tool_services.parse_function_definition(serializer.validated_data["definition"])
        except DjangoValidationError as error:
            raise as_drf_error(error) from error
        return Response(ToolImportResultSerializer(parsed).data)
