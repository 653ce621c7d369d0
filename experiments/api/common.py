from __future__ import annotations

from rest_framework import viewsets


class OwnedViewSetMixin:
    """Querysets come from a selector filtered by owner; new objects belong to the requesting user."""

    def perform_create(self, serializer) -> None:
        serializer.save(owner=self.request.user)


class OwnedModelViewSet(OwnedViewSetMixin, viewsets.ModelViewSet):
    pass


class OwnedReadOnlyViewSet(OwnedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    pass
