from __future__ import annotations

from django.db import models

from .base import OwnedModel, OwnedQuerySet


class ReadinessStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Done"
    FAILED = "failed", "Failed"


class ReadinessReport(OwnedModel):
    """Will RL have signal? k base-model rollouts per item, graded, and what they say (results).

    Made by the "Check readiness" button (sampled by a worker) or, for a run, from its step-0 eval
    rollouts. `grader_version` says which version of the grader scored it, so reports made before and
    after a grader change can be compared side by side.
    """

    name = models.CharField(max_length=200, blank=True)
    base_model = models.CharField(max_length=500)
    dataset = models.ForeignKey("Dataset", on_delete=models.CASCADE, related_name="readiness_reports")
    tools = models.ManyToManyField("Tool", related_name="+", blank=True)
    grader = models.ForeignKey("Grader", on_delete=models.CASCADE, related_name="readiness_reports")
    grader_version = models.PositiveIntegerField(default=1)
    run = models.OneToOneField(
        "Run", on_delete=models.CASCADE, null=True, blank=True, related_name="readiness_report"
    )
    k = models.PositiveIntegerField(default=4)  # rollouts per item
    max_items = models.PositiveIntegerField(null=True, blank=True)  # a subset: the first N items
    config = models.JSONField(default=dict, blank=True)  # sampling settings (trainer config fields)
    status = models.CharField(max_length=16, choices=ReadinessStatus.choices, default=ReadinessStatus.QUEUED)
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "dataset", "base_model"])]

    def __str__(self) -> str:
        return self.name or f"readiness #{self.pk}"


class GraderAudit(OwnedModel):
    """A second grader's opinion on a sample of a run's flagged and unflagged rollouts."""

    run = models.ForeignKey("Run", on_delete=models.CASCADE, related_name="grader_audits")
    grader = models.ForeignKey("Grader", on_delete=models.CASCADE, related_name="audits")
    grader_version = models.PositiveIntegerField(default=1)
    sample_size = models.PositiveIntegerField(default=10)  # of each: flagged and unflagged
    status = models.CharField(max_length=16, choices=ReadinessStatus.choices, default=ReadinessStatus.QUEUED)
    results = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"audit #{self.pk} of run {self.run_id}"
