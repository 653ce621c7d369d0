"""What a user takes away from a run: the adapter (PEFT), a merged model, metrics CSV, rollouts JSONL."""

from __future__ import annotations

import csv
import dataclasses
import io
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import orjson

from trainer.interfaces import TrajectoryRecord

from ..models import Checkpoint, MetricPoint, Run, Trajectory
from .training import run_output_dir

FINAL_ADAPTER_DIR = "adapter"  # trainer.loop.FINAL_ADAPTER_DIR (not imported: that would import torch)
MERGED_MODEL_DIR = "merged"
# Files of a PEFT adapter; the optimizer/scheduler/RNG state in a checkpoint stays on the server.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


class ArtifactMissing(Exception):
    """The requested artifact does not exist (yet); the message says why, for the user."""


def adapter_directory(
    *, run: Run, step: int | None = None, checkpoints: list[Checkpoint] | None = None
) -> Path:
    """The final adapter, or a checkpoint's adapter at `step`, or the latest checkpoint's.
    `checkpoints`: the run's rows newest first, when the caller has read them already."""
    if step is None:
        final = run_output_dir(run.pk) / FINAL_ADAPTER_DIR
        if (final / "adapter_config.json").is_file():
            return final
        if checkpoints is None:
            checkpoints = Checkpoint.objects.filter(run=run).order_by("-step")
    else:
        checkpoints = (
            [c for c in checkpoints if c.step == step]
            if checkpoints is not None
            else (Checkpoint.objects.filter(run=run, step=step))
        )
    for checkpoint in checkpoints:
        path = Path(checkpoint.path)
        if (path / "adapter_config.json").is_file():
            return path
    if step is not None:
        raise ArtifactMissing(
            f"No adapter for step {step}: the checkpoint is missing or was pruned (keep_checkpoints)."
        )
    raise ArtifactMissing("This run has no adapter yet: it is written at each checkpoint and at the end.")


def checkpoint_has_adapter(checkpoint: Checkpoint) -> bool:
    return (Path(checkpoint.path) / "adapter_config.json").is_file()


def zip_directory(directory: Path, *, only: tuple[str, ...] | None = None) -> tempfile.SpooledTemporaryFile:
    """A zip of the directory's files (optionally only the named ones), ready to stream."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and (only is None or path.name in only):
                archive.write(path, arcname=str(path.relative_to(directory)))
    spool.seek(0)
    return spool


def adapter_zip(*, run: Run, step: int | None = None) -> tuple[tempfile.SpooledTemporaryFile, str]:
    directory = adapter_directory(run=run, step=step)
    suffix = (
        f"step-{step}"
        if step is not None
        else "final"
        if directory.name == FINAL_ADAPTER_DIR
        else directory.name
    )
    return zip_directory(directory, only=ADAPTER_FILES), f"run-{run.pk}-adapter-{suffix}.zip"


def merged_model_directory(*, run: Run) -> Path | None:
    directory = run_output_dir(run.pk) / MERGED_MODEL_DIR
    return directory if (directory / "config.json").is_file() else None


def merged_model_zip(*, run: Run) -> tuple[tempfile.SpooledTemporaryFile, str]:
    directory = merged_model_directory(run=run)
    if directory is None:
        raise ArtifactMissing("The merged model has not been built yet: use “Build merged model”.")
    return zip_directory(directory), f"run-{run.pk}-merged.zip"


MERGED_STATUS_FILE = "merged-status.json"


@dataclasses.dataclass
class MergedStatus:
    """Where the merged model of a run stands: not_built, queued, building, ready or failed."""

    status: str
    error: str = ""
    updated_at: float | None = None


def _write_merged_status(run_id: int, status: str, error: str = "") -> None:
    path = run_output_dir(run_id) / MERGED_STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps({"status": status, "error": error, "updated_at": time.time()}))
    temporary.replace(path)  # atomic: a reader never sees half a file


def merged_status(*, run: Run) -> MergedStatus:
    if merged_model_directory(run=run) is not None:
        return MergedStatus(status="ready")
    path = run_output_dir(run.pk) / MERGED_STATUS_FILE
    try:
        recorded = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return MergedStatus(status="not_built")
    status = recorded.get("status")
    if status == "ready":  # recorded as ready, but the files are gone
        return MergedStatus(status="not_built")
    return MergedStatus(status=status, error=recorded.get("error", ""), updated_at=recorded.get("updated_at"))


def request_merged_model(*, run: Run) -> Path:
    """Queue the merged-model build for a run that has an adapter (the run page's button and the
    API's action). Enqueued when the surrounding transaction commits; returns the adapter it merges.
    Raises ArtifactMissing (with the user's explanation) when there is no adapter yet."""
    from ..tasks import build_merged_model as build_merged_model_task

    adapter = adapter_directory(run=run)
    _write_merged_status(run.pk, "queued")
    build_merged_model_task.delay_on_commit(run.pk)
    return adapter


def build_merged_model(*, run_id: int) -> Path:
    """Merge the final (or latest) adapter into the base model and save it (runs in a worker)."""
    from trainer.config import TrainerConfig
    from trainer.models import export_merged_model

    from .training import resolve_base_model

    _write_merged_status(run_id, "building")
    try:
        run = Run.objects.get(pk=run_id)
        adapter = adapter_directory(run=run)
        config = TrainerConfig.from_dict({**run.config, "model": resolve_base_model(run.base_model)})
        target = run_output_dir(run.pk) / MERGED_MODEL_DIR
        path = export_merged_model(config=config, adapter_dir=adapter, output_dir=str(target))
    except Exception as exc:
        _write_merged_status(run_id, "failed", f"{type(exc).__name__}: {exc}"[:1000])
        raise
    _write_merged_status(run_id, "ready")
    return path


def metrics_csv_rows(*, run: Run) -> Iterator[str]:
    """Wide CSV: one row per step, one column per metric key (empty where a step lacks a key)."""
    keys = sorted(MetricPoint.objects.filter(run=run).values_list("key", flat=True).distinct())
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(["step", *keys])
    yield flush()
    column = {key: index for index, key in enumerate(keys)}
    current_step, row = None, None
    points = MetricPoint.objects.filter(run=run).order_by("step", "key").values_list("step", "key", "value")
    for step, key, value in points.iterator(chunk_size=5000):
        if step != current_step:
            if row is not None:
                writer.writerow([current_step, *row])
                yield flush()
            current_step, row = step, [""] * len(keys)
        row[column[key]] = repr(value)
    if row is not None:
        writer.writerow([current_step, *row])
        yield flush()


# A rollout exported is what the trainer reported (its TrajectoryRecord) plus the watch's flags, so
# an exported line reads back as a TrajectoryRecord. (trainer.interfaces imports no torch.)
ROLLOUT_EXPORT_FIELDS = (*(field.name for field in dataclasses.fields(TrajectoryRecord)), "flags")


def rollouts_jsonl_lines(*, run: Run) -> Iterator[bytes]:
    rows = Trajectory.objects.filter(run=run).order_by("step", "id").values_list(*ROLLOUT_EXPORT_FIELDS)
    for row in rows.iterator(chunk_size=1000):
        yield orjson.dumps(dict(zip(ROLLOUT_EXPORT_FIELDS, row, strict=True))) + b"\n"
