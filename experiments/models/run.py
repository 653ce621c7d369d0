from __future__ import annotations

from django.db import models

from .base import OwnedModel, OwnedQuerySet, RunOwnedQuerySet


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    PAUSED = "paused", "Paused"  # stopped by the reward-hacking watch's pause rule, for review


# The status machine. A failed, cancelled or paused run goes back to queued only through Resume.
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED}
    ),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset({RunStatus.QUEUED}),
    RunStatus.CANCELLED: frozenset({RunStatus.QUEUED}),
    RunStatus.PAUSED: frozenset({RunStatus.QUEUED, RunStatus.CANCELLED}),
}
# Stopped states: no worker holds the run (a paused run waits for review and a Resume).
TERMINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PAUSED})


class Run(OwnedModel):
    """One GRPO training run: its configuration, where it stands, and who (which worker) holds it."""

    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    base_model = models.CharField(max_length=500)  # hub id, local path, or "bundled:smollm2-135m"
    config = models.JSONField(default=dict)  # the trainer's config (hyperparameters), as submitted
    train_dataset = models.ForeignKey("Dataset", on_delete=models.PROTECT, related_name="train_runs")
    eval_dataset = models.ForeignKey(
        "Dataset", on_delete=models.PROTECT, related_name="eval_runs", null=True, blank=True
    )
    tools = models.ManyToManyField("Tool", related_name="runs", blank=True)
    # MCP tools the run may use, with the exact schemas it was started with:
    # [{"server": McpServer pk, "name": ..., "description": ..., "input_schema": {...}}].
    mcp_tools = models.JSONField(default=list, blank=True)
    environment = models.ForeignKey(
        "Environment", on_delete=models.PROTECT, related_name="runs", null=True, blank=True
    )
    grader = models.ForeignKey("Grader", on_delete=models.PROTECT, related_name="runs")

    # Attempts: each start (first or resume) is one; capped at max_attempts.
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    # The lease: only the worker named here may write the run's results, while its heartbeat is fresh.
    lease_owner = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # Reward-hacking watch: per-run rule settings (see experiments/watch/rules.py) and, once its pause rule
    # fired, {"rule", "detail", "step"} (kept after a resume, with "resumed_at_step").
    watch_config = models.JSONField(default=dict, blank=True)
    pause_requested = models.BooleanField(default=False)
    paused_by = models.JSONField(default=dict, blank=True)

    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    # The last per-run event sequence number handed out (see RunEvent.seq).
    last_seq = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)

    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Lineage: a fork starts from its parent's adapter at `parent_step` (a checkpoint, or the final
    # adapter), with its own settings, a fresh optimizer and step counter.
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="forks")
    parent_step = models.PositiveIntegerField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]

    def __str__(self) -> str:
        return self.name

    def can_transition_to(self, status: str) -> bool:
        return status in RUN_TRANSITIONS[self.status]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class RunEvent(models.Model):
    """Everything that happens to a run, in order: the record the live view replays after `seq`.

    `seq` is per run and strictly increasing; one event per step (all its metrics in one payload),
    plus status changes, log lines and checkpoints.
    """

    class Kind(models.TextChoices):
        METRICS = "metrics"
        STATUS = "status"
        LOG = "log"
        CHECKPOINT = "checkpoint"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    step = models.IntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RunOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="run_event_unique_seq")]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.seq} {self.kind}"

    def as_message(self) -> dict:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "step": self.step,
            "payload": self.payload,
            "time": self.created_at.isoformat() if self.created_at else None,
        }


class MetricPoint(models.Model):
    """One scalar of one step (e.g. step 12, "reward" = 0.41). Unique per run/step/key: idempotent."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_points")
    seq = models.PositiveBigIntegerField()  # the RunEvent that carried it
    step = models.IntegerField()
    key = models.CharField(max_length=200)
    value = models.FloatField()
    wall_time = models.DateTimeField()

    objects = RunOwnedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "step", "key"], name="metric_point_unique_step_key")
        ]
        indexes = [
            models.Index(fields=["run", "key", "step"]),
            models.Index(fields=["run", "seq"]),
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.step} {self.key}={self.value}"


class MetricRollup(models.Model):
    """A bucket of one metric's points, kept at write time so that long series read fast.

    Per run, key and bucket width (one of `ROLLUP_WIDTHS` steps): bucket `b` covers the steps
    `b * width` to `b * width + width - 1` and holds the point with the lowest value (ties: the
    earliest), the one with the highest value (ties: the latest), the last one, and the point count:
    exactly what the chart's min/max/last downsampling keeps of those steps. Maintained by
    `services/rollups.py` where metric points are written or discarded.
    """

    # Each width doubles the one before, so that a bucket is exactly two buckets of the finer width.
    ROLLUP_WIDTHS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

    # The unique index (run, key, width, bucket) is also the index reads use: no separate run index.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_rollups", db_index=False)
    key = models.CharField(max_length=200)
    width = models.PositiveIntegerField()
    bucket = models.IntegerField()
    count = models.PositiveIntegerField()
    min_step = models.IntegerField()
    min_value = models.FloatField()
    min_time = models.DateTimeField()
    max_step = models.IntegerField()
    max_value = models.FloatField()
    max_time = models.DateTimeField()
    last_step = models.IntegerField()
    last_value = models.FloatField()
    last_time = models.DateTimeField()

    objects = RunOwnedQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "key", "width", "bucket"], name="metric_rollup_unique_bucket"
            )
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} {self.key} steps {self.bucket * self.width}+{self.width}"


class Checkpoint(models.Model):
    """A LoRA adapter + optimizer state written by the trainer (atomically) at a step."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.IntegerField()
    path = models.CharField(max_length=1000)
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RunOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_unique_step")]

    def __str__(self) -> str:
        return f"run {self.run_id} checkpoint @ {self.step}"
