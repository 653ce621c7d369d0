from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from ..fields import EncryptedJSONField
from .base import OwnedModel, RunOwnedQuerySet


class McpServer(OwnedModel):
    """An MCP server (streamable HTTP) whose tools runs may use; its tool list is cached on refresh."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    headers = EncryptedJSONField(default=dict, blank=True)  # secrets: encrypted, write-only
    timeout_s = models.FloatField(default=30.0, validators=[MinValueValidator(0.1), MaxValueValidator(600)])
    max_response_bytes = models.PositiveIntegerField(
        default=1_000_000, validators=[MinValueValidator(1), MaxValueValidator(100_000_000)]
    )
    # [{"name", "description", "input_schema"}] as the server listed them at `tools_refreshed_at`.
    tools = models.JSONField(default=list, blank=True)
    tools_refreshed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="mcp_server_unique_name_per_owner")
        ]

    def __str__(self) -> str:
        return self.name


class Environment(OwnedModel):
    """A per-rollout environment: POST start before the first turn, POST end after grading."""

    name = models.CharField(max_length=100)
    start_url = models.URLField(max_length=2000)
    end_url = models.URLField(max_length=2000)
    headers = EncryptedJSONField(default=dict, blank=True)
    signing_secret = EncryptedJSONField(null=True, blank=True)
    start_timeout_s = models.FloatField(
        default=30.0, validators=[MinValueValidator(0.1), MaxValueValidator(600)]
    )
    end_timeout_s = models.FloatField(
        default=10.0, validators=[MinValueValidator(0.1), MaxValueValidator(600)]
    )
    # How many of a run's environments may be alive at once (starts wait for a free one).
    max_live = models.PositiveIntegerField(
        default=64, validators=[MinValueValidator(1), MaxValueValidator(4096)]
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="environment_unique_name_per_owner")
        ]

    def __str__(self) -> str:
        return self.name


class EnvironmentLease(models.Model):
    """One started environment of one rollout: written before its start is sent, so that its end is
    delivered at least once even if the worker dies (the sweeper sends the ends still missing once
    `lease_expires_at` has passed)."""

    run = models.ForeignKey("Run", on_delete=models.CASCADE, related_name="environment_leases")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="leases")
    trace_id = models.CharField(max_length=64, unique=True)
    split = models.CharField(max_length=8)
    item_index = models.IntegerField()
    started_at = models.DateTimeField(auto_now_add=True)
    lease_expires_at = models.DateTimeField(db_index=True)
    # The end request's body; until the trainer knows the outcome it says finish_reason "lost".
    end_payload = models.JSONField(default=dict)
    end_delivered_at = models.DateTimeField(null=True, blank=True, db_index=True)
    end_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    objects = RunOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["started_at"]
        indexes = [
            models.Index(fields=["end_delivered_at", "lease_expires_at"], name="env_lease_undelivered")
        ]

    def __str__(self) -> str:
        return self.trace_id
