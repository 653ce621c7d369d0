from __future__ import annotations

from django.db import models

from .base import OwnedModel, OwnedQuerySet


class PlaygroundStatus(models.TextChoices):
    CREATED = "created", "Created"  # starts when its page (or an API client) opens the WebSocket
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


PLAYGROUND_FINISHED = (PlaygroundStatus.SUCCEEDED, PlaygroundStatus.STOPPED, PlaygroundStatus.FAILED)


class PlaygroundSession(OwnedModel):
    """One prompt played by a run's adapter (a checkpoint's, or the final one) and by the base model,
    side by side: each a full multi-turn rollout with the run's tools, graded by the run's grader."""

    run = models.ForeignKey("Run", on_delete=models.CASCADE, related_name="playground_sessions")
    step = models.PositiveIntegerField(null=True, blank=True)  # None: the run's final adapter
    item = models.ForeignKey(
        "DatasetItem", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    messages = models.JSONField(default=list)  # the prompt: the item's messages, or a typed one
    status = models.CharField(
        max_length=16, choices=PlaygroundStatus.choices, default=PlaygroundStatus.CREATED
    )
    stop_requested = models.BooleanField(default=False)
    # {"adapter": {...}, "base": {...}}: each side's messages, final answer, score, finish reason.
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    @property
    def is_finished(self) -> bool:
        return self.status in PLAYGROUND_FINISHED
