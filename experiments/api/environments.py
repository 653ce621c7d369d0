"""REST API for MCP tool servers and per-rollout environments (registration, refresh, Try it)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from ..fields import mask_secret
from ..models import Environment, McpServer, Tool
from ..services import environments as environment_services
from ..services import tools as tool_services
from .common import OwnedModelViewSet
from .tools import as_drf_error


class _SecretHeadersMixin(serializers.ModelSerializer):
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=True),
        write_only=True,
        required=False,
        help_text="Request headers (name -> value), encrypted at rest, never returned; on update an "
        "empty value keeps the stored value of that header.",
    )
    headers_masked = serializers.SerializerMethodField(help_text="Header names with masked values.")

    def get_headers_masked(self, obj) -> dict[str, str]:
        return {name: mask_secret(value) for name, value in (obj.headers or {}).items()}

    def validate_name(self, value: str) -> str:
        owner = self.context["request"].user
        clash = self.Meta.model.objects.filter(owner=owner, name=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError(f"You already have one named {value!r}.")
        return value

    def _merge_headers(self, validated: dict) -> None:
        if "headers" in validated:
            stored = dict(self.instance.headers or {}) if self.instance is not None else {}
            try:
                validated["headers"] = tool_services.merge_headers(
                    submitted=validated["headers"].items(), stored=stored
                )
            except DjangoValidationError as error:
                raise as_drf_error(error) from error

    def create(self, validated_data: dict):
        self._merge_headers(validated_data)
        return super().create(validated_data)

    def update(self, instance, validated_data: dict):
        self._merge_headers(validated_data)
        return super().update(instance, validated_data)


class McpServerSerializer(_SecretHeadersMixin):
    class Meta:
        model = McpServer
        fields = [
            "id",
            "name",
            "url",
            "headers",
            "headers_masked",
            "timeout_s",
            "max_response_bytes",
            "tools",
            "tools_refreshed_at",
            "last_error",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "tools", "tools_refreshed_at", "last_error", "created_at", "updated_at"]


class EnvironmentSerializer(_SecretHeadersMixin):
    signing_secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="HMAC secret (X-RFT-Signature).",
    )
    signing_secret_masked = serializers.SerializerMethodField()

    class Meta:
        model = Environment
        fields = [
            "id",
            "name",
            "start_url",
            "end_url",
            "headers",
            "headers_masked",
            "signing_secret",
            "signing_secret_masked",
            "start_timeout_s",
            "end_timeout_s",
            "max_live",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def get_signing_secret_masked(self, obj) -> str:
        return mask_secret(obj.signing_secret)

    def update(self, instance, validated_data: dict):
        if not validated_data.get("signing_secret"):
            validated_data.pop("signing_secret", None)  # empty: keep the stored secret
        return super().update(instance, validated_data)


class McpTrySerializer(serializers.Serializer):
    tool = serializers.CharField(help_text="A tool name the server lists.")
    arguments = serializers.JSONField(default=dict, help_text="The arguments (a JSON object).")


class EnvironmentTrySerializer(serializers.Serializer):
    item = serializers.DictField(required=False, default=dict, help_text="A dataset row, sent as `item`.")
    tool = serializers.PrimaryKeyRelatedField(
        queryset=Tool.objects.all(),
        required=False,
        allow_null=True,
        help_text="A tool to call between start and end.",
    )
    arguments = serializers.JSONField(required=False, default=dict)

    def validate_tool(self, tool):
        if tool is not None and tool.owner_id != self.context["request"].user.pk:
            raise serializers.ValidationError("Not one of your tools.")
        return tool


class McpServerViewSet(OwnedModelViewSet):
    """MCP servers (streamable HTTP) whose tools runs may use."""

    serializer_class = McpServerSerializer

    def get_queryset(self):
        return McpServer.objects.visible_to(self.request.user)

    def perform_create(self, serializer) -> None:
        server = serializer.save(owner=self.request.user)
        environment_services.refresh_mcp_tools(server)

    @extend_schema(request=None, responses=McpServerSerializer)
    @action(detail=True, methods=["post"])
    def refresh(self, request, pk=None):
        """List the server's tools now (through the SDK and the outbound policy) and store them."""
        server = environment_services.refresh_mcp_tools(self.get_object())
        return Response(McpServerSerializer(server, context=self.get_serializer_context()).data)

    @extend_schema(request=McpTrySerializer, responses=dict)
    @action(detail=True, methods=["post"], url_path="try")
    def try_call(self, request, pk=None):
        """Call one tool exactly as a rollout would; returns what the model would read."""
        server = self.get_object()
        serializer = McpTrySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        return Response(
            environment_services.try_mcp_tool(server=server, name=data["tool"], arguments=data["arguments"])
        )


class EnvironmentViewSet(OwnedModelViewSet):
    """Per-rollout environments (start/end lifecycle endpoints)."""

    serializer_class = EnvironmentSerializer

    def get_queryset(self):
        return Environment.objects.visible_to(self.request.user)

    @extend_schema(request=EnvironmentTrySerializer, responses=dict)
    @action(detail=True, methods=["post"], url_path="try")
    def try_lifecycle(self, request, pk=None):
        """start -> one tool call (optional) -> end, with one trace_id, exactly as a rollout."""
        environment = self.get_object()
        serializer = EnvironmentTrySerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        return Response(
            environment_services.try_environment(
                environment=environment, item=data["item"], tool=data.get("tool"), arguments=data["arguments"]
            )
        )
