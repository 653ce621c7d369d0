from __future__ import annotations

from django.db import models

from .base import RunOwnedQuerySet


class Trajectory(models.Model):
    """One rollout: the turns, the tool calls and their results, the answer and how it was graded."""

    class Split(models.TextChoices):
        TRAIN = "train"
        EVAL = "eval"

    trace_id = models.CharField(max_length=64, unique=True)  # "trace_<uuid hex>", sent to tools
    run = models.ForeignKey("Run", on_delete=models.CASCADE, related_name="trajectories")
    step = models.IntegerField()
    split = models.CharField(max_length=8, choices=Split.choices)
    item = models.ForeignKey(
        "DatasetItem", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    item_index = models.IntegerField()
    group_index = models.IntegerField()
    sample_index = models.IntegerField()
    messages = models.JSONField(default=list)
    final_answer = models.TextField(blank=True)
    reward = models.FloatField(null=True, blank=True)  # score - penalty; null when grading failed
    score = models.FloatField(null=True, blank=True)
    penalty = models.FloatField(default=0.0)
    advantage = models.FloatField(null=True, blank=True)
    sub_scores = models.JSONField(default=dict, blank=True)
    grader_errors = models.JSONField(default=list, blank=True)
    tool_calls = models.PositiveIntegerField(default=0)
    tool_call_names = models.JSONField(default=list, blank=True)
    tool_errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    latency_ms = models.FloatField(default=0.0)
    finish_reason = models.CharField(max_length=16, blank=True)
    # The per-rollout environment: start/end times, context, errors (None without an environment).
    environment = models.JSONField(null=True, blank=True)
    # Reward-hacking watch: [{"rule": ..., "detail": ...}] (empty when nothing fired).
    flags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RunOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["run", "step", "group_index", "sample_index"]
        indexes = [
            models.Index(fields=["run", "step", "id"]),
            models.Index(fields=["run", "split", "step"]),
            models.Index(fields=["run", "reward"]),
            models.Index(fields=["run", "split", "item_index"]),
        ]

    def __str__(self) -> str:
        return self.trace_id
