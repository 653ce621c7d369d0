from __future__ import annotations

from rest_framework import serializers

from .. import selectors
from ..models import Dataset
from .common import OwnedReadOnlyViewSet


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "description",
            "split",
            "status",
            "item_count",
            "file_sha256",
            "file_size",
            "stats",
            "error_count",
            "derived_from",
            "created_at",
        ]
        read_only_fields = fields


class DatasetViewSet(OwnedReadOnlyViewSet):
    serializer_class = DatasetSerializer

    def get_queryset(self):
        return selectors.datasets_for(user=self.request.user)
