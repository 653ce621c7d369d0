from __future__ import annotations

from django.db import models

from .base import OwnedModel, OwnedQuerySet


class DatasetSplit(models.TextChoices):
    TRAIN = "train", "Train"
    EVAL = "eval", "Eval"


class DatasetStatus(models.TextChoices):
    READY = "ready", "Ready"
    INVALID = "invalid", "Invalid (nothing imported)"


class Dataset(OwnedModel):
    """An uploaded JSONL file of tasks. Imported whole or not at all."""

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    split = models.CharField(max_length=8, choices=DatasetSplit.choices, default=DatasetSplit.TRAIN)
    status = models.CharField(max_length=8, choices=DatasetStatus.choices, default=DatasetStatus.READY)
    item_count = models.PositiveIntegerField(default=0)
    # The original upload, kept under MEDIA_ROOT, and its SHA-256 (duplicate detection).
    file_path = models.CharField(max_length=500, blank=True)
    file_sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    file_size = models.PositiveBigIntegerField(default=0)
    # Field presence, message-count and length distributions, token estimate (see services.datasets).
    stats = models.JSONField(default=dict, blank=True)
    # For an invalid upload: the first errors as [{"line": n, "error": "..."}], and how many in all.
    errors = models.JSONField(default=list, blank=True)
    error_count = models.PositiveIntegerField(default=0)
    # Set when this dataset was carved off another one (an eval split taken from a train file).
    derived_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="derived"
    )

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return self.name


class DatasetItemQuerySet(OwnedQuerySet):
    owner_path = "dataset__owner"


class DatasetItem(models.Model):
    """One line of a dataset: the row as uploaded plus a few precomputed facts for the browser."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField()  # 0-based position among the dataset's items
    line_number = models.PositiveIntegerField()  # 1-based line in the uploaded file
    data = models.JSONField()
    message_count = models.PositiveIntegerField(default=0)
    char_count = models.PositiveIntegerField(default=0)
    has_tools = models.BooleanField(default=False)

    objects = DatasetItemQuerySet.as_manager()

    class Meta:
        ordering = ["dataset", "index"]
        constraints = [models.UniqueConstraint(fields=["dataset", "index"], name="dataset_item_unique_index")]

    def __str__(self) -> str:
        return f"{self.dataset_id}#{self.index}"
