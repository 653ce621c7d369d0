from django.contrib import admin

from .models import (
    Checkpoint,
    Dataset,
    DatasetItem,
    Grader,
    GraderAudit,
    MetricPoint,
    ReadinessReport,
    Run,
    RunEvent,
    Tool,
    Trajectory,
)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "split", "status", "item_count", "created_at")
    list_filter = ("split", "status")
    search_fields = ("name", "file_sha256")


@admin.register(DatasetItem)
class DatasetItemAdmin(admin.ModelAdmin):
    list_display = ("dataset", "index", "line_number", "message_count", "has_tools")
    list_select_related = ("dataset",)
    raw_id_fields = ("dataset",)


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "url", "timeout_s")
    search_fields = ("name", "url")
    # Header values and the signing secret are secrets: never shown, not even to administrators.
    exclude = ("headers", "signing_secret")


@admin.register(Grader)
class GraderAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "type", "version")
    exclude = ("secrets",)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "status", "attempt", "current_step", "total_steps", "heartbeat_at")
    list_filter = ("status",)
    raw_id_fields = ("train_dataset", "eval_dataset", "grader")


@admin.register(RunEvent)
class RunEventAdmin(admin.ModelAdmin):
    list_display = ("run", "seq", "kind", "step", "created_at")
    list_filter = ("kind",)
    raw_id_fields = ("run",)


@admin.register(MetricPoint)
class MetricPointAdmin(admin.ModelAdmin):
    list_display = ("run", "step", "key", "value")
    raw_id_fields = ("run",)


@admin.register(Trajectory)
class TrajectoryAdmin(admin.ModelAdmin):
    list_display = ("trace_id", "run", "step", "split", "reward", "tool_calls")
    search_fields = ("trace_id",)
    raw_id_fields = ("run", "item")


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ("run", "step", "path", "created_at")
    raw_id_fields = ("run",)


@admin.register(ReadinessReport)
class ReadinessReportAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "owner",
        "status",
        "base_model",
        "dataset",
        "grader",
        "grader_version",
        "k",
        "created_at",
    )
    list_filter = ("status",)
    raw_id_fields = ("owner", "dataset", "grader", "run")


@admin.register(GraderAudit)
class GraderAuditAdmin(admin.ModelAdmin):
    list_display = ("run", "grader", "grader_version", "status", "sample_size", "created_at")
    raw_id_fields = ("owner", "run", "grader")
