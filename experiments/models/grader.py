from __future__ import annotations

from django.db import models

from ..fields import EncryptedJSONField
from .base import OwnedModel


class Grader(OwnedModel):
    """A grader spec in the widely used grader JSON shape (string_check, text_similarity, python, ...)."""

    name = models.CharField(max_length=200)
    type = models.CharField(max_length=32)
    spec = models.JSONField()
    # Secrets the spec needs (a model judge's API key, an endpoint's header values), kept out of `spec`.
    secrets = EncryptedJSONField(default=dict, blank=True)
    # Bumped on every edit of the spec, so that reports can say which version scored them.
    version = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="grader_unique_name_per_owner")]

    def __str__(self) -> str:
        return self.name
