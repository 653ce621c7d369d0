from __future__ import annotations

from rest_framework import serializers

from .. import selectors
from ..fields import mask_secret
from ..models import Tool
from .common import OwnedModelViewSet


class ToolSerializer(serializers.ModelSerializer):
    # Header values and the signing secret are write-only: they are never sent back, only masked.
    headers = serializers.DictField(child=serializers.CharField(), write_only=True, required=False)
    signing_secret = serializers.CharField(write_only=True, required=False, allow_null=True, allow_blank=True)
    headers_masked = serializers.SerializerMethodField()
    signing_secret_masked = serializers.SerializerMethodField()

    class Meta:
        model = Tool
        fields = [
            "id",
            "name",
            "description",
            "parameters",
            "url",
            "headers",
            "headers_masked",
            "signing_secret",
            "signing_secret_masked",
            "timeout_s",
            "max_response_bytes",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

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


class ToolViewSet(OwnedModelViewSet):
    serializer_class = ToolSerializer

    def get_queryset(self):
        return selectors.tools_for(user=self.request.user)
