from __future__ import annotations

from rest_framework import serializers

from .. import selectors
from ..models import Grader
from .common import OwnedReadOnlyViewSet


class GraderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Grader
        fields = ["id", "name", "type", "spec", "version", "created_at", "updated_at"]
        read_only_fields = fields


class GraderViewSet(OwnedReadOnlyViewSet):
    serializer_class = GraderSerializer

    def get_queryset(self):
        return selectors.graders_for(user=self.request.user)
