from __future__ import annotations

from django.conf import settings
from django.db import models


class OwnedQuerySet(models.QuerySet):
    """Every queryset the app serves goes through `visible_to`: users see their own, staff see all."""

    owner_path = "owner"

    def visible_to(self, user) -> OwnedQuerySet:
        if not user or not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(**{self.owner_path: user})


class RunOwnedQuerySet(OwnedQuerySet):
    """Rows that belong to a run (metrics, events, trajectories, checkpoints) are owned through it."""

    owner_path = "run__owner"


class OwnedModel(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        abstract = True
