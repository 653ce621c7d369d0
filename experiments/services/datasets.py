"""Datasets: import an uploaded JSONL file (whole or not at all), carve an eval split, delete.

An upload is read twice, both times as a stream: first it is copied under MEDIA_ROOT/datasets/ while
its SHA-256 is computed (and, when an eval split is carved, its items are counted); then the copy is
parsed line by line and stored in batches inside one transaction. The first bad line stops the
storing but not the checking: every error is counted, the transaction is rolled back, and what is
recorded is an `invalid` dataset with its errors and no items.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import ProtectedError, Q

from .. import import_helper, pacing
from ..dataset_format import (
    DEFAULT_MAX_ERRORS,
    DEFAULT_MAX_LINE_BYTES,
    READ_CHUNK_BYTES,
    DatasetStats,
    LineError,
    ParsedItem,
    is_blank_line,
    iter_lines,
    iter_records,
)
from ..models import Dataset, DatasetItem, Run, Trajectory
from ..models.dataset import DatasetSplit, DatasetStatus

logger = logging.getLogger(__name__)

DATASETS_DIR = "datasets"  # under MEDIA_ROOT
IMPORT_BATCH_SIZE = 2000
_ITEM_COLUMNS = ("dataset_id", "index", "line_number", "data", "message_count", "char_count", "has_tools")


class DatasetError(Exception):
    """Something the user can fix; the message is written for them."""


class UploadTooLarge(DatasetError):
    def __init__(self, *, max_bytes: int) -> None:
        super().__init__(
            f"The file is larger than the upload limit of {_human_bytes(max_bytes)} "
            "(RFT_MAX_UPLOAD_BYTES); nothing was stored."
        )
        self.max_bytes = max_bytes


class DuplicateUpload(DatasetError):
    def __init__(self, *, existing: Dataset) -> None:
        super().__init__(
            f"This file was already uploaded as “{existing.name}” (dataset {existing.pk}, "
            f"SHA-256 {existing.file_sha256[:12]}…); nothing was stored."
        )
        self.existing = existing


class DatasetInUse(DatasetError):
    def __init__(self, *, dataset: Dataset, run_names: list[str], run_count: int) -> None:
        names = ", ".join(f"“{name}”" for name in run_names)
        more = f" and {run_count - len(run_names)} more" if run_count > len(run_names) else ""
        super().__init__(
            f"“{dataset.name}” cannot be deleted: it is used by {run_count} run"
            f"{'s' if run_count != 1 else ''} ({names}{more}). Delete those runs first."
        )
        self.run_count = run_count


@dataclass(frozen=True)
class EvalCarve:
    """Take an eval split off a train file: a fraction (0 < f < 1) or a count of items, chosen by seed."""

    fraction: float | None = None
    count: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.count is None):
            raise DatasetError("Give either a fraction or a count for the eval split, not both.")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise DatasetError("The eval fraction must be between 0 and 1 (e.g. 0.1 for 10 %).")
        if self.count is not None and self.count < 1:
            raise DatasetError("The eval count must be at least 1.")

    def size_for(self, item_count: int) -> int:
        if self.count is not None:
            return self.count
        return max(1, round(item_count * self.fraction))

    def as_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "count": self.count, "seed": self.seed}


@dataclass
class UploadResult:
    dataset: Dataset  # the (train or eval) dataset, or the invalid record listing the errors
    eval_dataset: Dataset | None = None  # the carved eval split, when one was asked for

    @property
    def ok(self) -> bool:
        return self.dataset.status == DatasetStatus.READY


def upload_dataset(
    *,
    owner,
    file: IO[bytes],
    name: str,
    description: str = "",
    split: str = DatasetSplit.TRAIN,
    carve: EvalCarve | None = None,
    max_bytes: int | None = None,
    max_line_bytes: int | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
) -> UploadResult:
    """Store an uploaded JSONL file as a dataset, or record why it is invalid (then nothing is imported).

    Raises UploadTooLarge, DuplicateUpload (same SHA-256 as one of the owner's datasets) or
    DatasetError (an empty file, an impossible eval split) and then leaves nothing behind.
    """
    max_bytes = settings.RFT_MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    max_line_bytes = max_line_bytes or getattr(settings, "RFT_DATASET_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES)
    if carve is not None and split != DatasetSplit.TRAIN:
        raise DatasetError("An eval split can only be carved off a train file.")
    declared_size = getattr(file, "size", None)
    if declared_size is not None and declared_size > max_bytes:
        raise UploadTooLarge(max_bytes=max_bytes)

    started = time.monotonic()
    relative_path = f"{DATASETS_DIR}/{uuid.uuid4().hex}.jsonl"
    stored = Path(settings.MEDIA_ROOT) / relative_path
    stored.parent.mkdir(parents=True, exist_ok=True)
    try:
        copy = _copy_upload(file, stored, max_bytes=max_bytes, count_items=carve is not None)
        existing = Dataset.objects.filter(owner=owner, file_sha256=copy.sha256).order_by("pk").first()
        if existing is not None:
            raise DuplicateUpload(existing=existing)
        eval_positions: frozenset[int] = frozenset()
        if carve is not None:
            eval_size = carve.size_for(copy.item_count)
            if copy.item_count and not 0 < eval_size < copy.item_count:
                raise DatasetError(
                    f"An eval split of {eval_size} would leave no training items (the file has "
                    f"{copy.item_count} lines)."
                )
            if copy.item_count:
                sample = random.Random(carve.seed).sample(range(copy.item_count), eval_size)
                eval_positions = frozenset(sample)
        fields = {
            "owner": owner,
            "name": name,
            "description": description,
            "file_path": relative_path,
            "file_sha256": copy.sha256,
            "file_size": copy.size,
        }
        arguments = dict(
            fields=fields,
            split=split,
            carve=carve,
            eval_positions=eval_positions,
            max_line_bytes=max_line_bytes,
            max_errors=max_errors,
        )
        if (
            connection.in_atomic_block  # the caller's open transaction must see the rows (and the owner)
            or import_helper.IN_HELPER  # this is the helper
            or settings.RFT_IMPORT_PROCESSES <= 0
            or copy.size < settings.RFT_IMPORT_HELPER_MIN_BYTES  # a small file costs less than a hand-off
        ):
            result = _import_items(stored, **arguments)
        else:
            result = _import_in_helper(stored, **arguments)
    except BaseException:
        stored.unlink(missing_ok=True)
        raise
    elapsed = time.monotonic() - started
    logger.info(
        "dataset upload %s: %s, %d items, %d errors, %s in %.2f s",
        result.dataset.pk,
        result.dataset.status,
        result.dataset.item_count + (result.eval_dataset.item_count if result.eval_dataset else 0),
        result.dataset.error_count,
        _human_bytes(copy.size),
        elapsed,
    )
    return result


def delete_dataset(*, dataset: Dataset) -> None:
    """Delete a dataset, its items and its stored file; refused (DatasetInUse) while a run uses it."""
    runs = Run.objects.filter(Q(train_dataset=dataset) | Q(eval_dataset=dataset)).order_by("-created_at")
    run_count = runs.count()
    if run_count:
        raise DatasetInUse(
            dataset=dataset, run_names=list(runs.values_list("name", flat=True)[:3]), run_count=run_count
        )
    file_path = dataset.file_path
    try:
        with transaction.atomic():
            # Items go in one statement (the ORM would load every item to null the rollouts' links).
            Trajectory.objects.filter(item__dataset=dataset).update(item=None)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {connection.ops.quote_name(DatasetItem._meta.db_table)} WHERE dataset_id = %s",
                    [dataset.pk],
                )
            dataset.delete()
    except ProtectedError as exc:  # a run was created in between
        raise DatasetInUse(dataset=dataset, run_names=[], run_count=len(exc.protected_objects)) from exc
    if file_path and not Dataset.objects.filter(file_path=file_path).exists():
        transaction.on_commit(lambda: (Path(settings.MEDIA_ROOT) / file_path).unlink(missing_ok=True))


# --- internals ---------------------------------------------------------------------------------------


@dataclass
class _Copy:
    sha256: str
    size: int
    item_count: int  # non-blank lines (counted only when asked)


class _HashingCopier:
    """A binary reader that copies what it reads to `out` and hashes it, refusing more than max_bytes."""

    def __init__(self, source: IO[bytes], out: IO[bytes], *, max_bytes: int) -> None:
        self.source, self.out, self.max_bytes = source, out, max_bytes
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = READ_CHUNK_BYTES) -> bytes:
        chunk = self.source.read(size)
        if chunk:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise UploadTooLarge(max_bytes=self.max_bytes)
            self.digest.update(chunk)
            self.out.write(chunk)
        return chunk


def _copy_upload(file: IO[bytes], stored: Path, *, max_bytes: int, count_items: bool) -> _Copy:
    moved = _move_hashed_upload(file, stored, max_bytes=max_bytes, count_items=count_items)
    if moved is not None:
        return moved
    seekable = getattr(file, "seekable", None)
    if seekable is not None and seekable():
        file.seek(0)
    item_count = 0
    with open(stored, "wb") as out:
        copier = _HashingCopier(file, out, max_bytes=max_bytes)
        if count_items:
            # The same rule as the parser's: blank lines (and a lone BOM) are not items.
            for line_number, line in iter_lines(copier, max_line_bytes=max_bytes):
                if not is_blank_line(line_number, line):
                    item_count += 1
        else:
            while copier.read(READ_CHUNK_BYTES):
                pass
    return _Copy(sha256=copier.digest.hexdigest(), size=copier.size, item_count=item_count)


def _move_hashed_upload(file, stored: Path, *, max_bytes: int, count_items: bool) -> _Copy | None:
    """An upload that Django spooled to a temporary file and hashed on the way in
    (experiments/upload_handlers.py): renamed into place, its hash and size already known. None when
    the file is not such an upload, when its items must be counted (that needs a pass anyway), or
    when the rename is impossible (the temporary folder is on another filesystem): then it is copied."""
    digest = getattr(file, "sha256", None)
    path = getattr(file, "temporary_file_path", None)
    if digest is None or path is None or count_items or file.size > max_bytes:
        return None
    try:
        os.replace(path(), stored)
    except OSError:
        return None
    os.chmod(stored, 0o644)  # a temporary file is private to its creator; a stored upload is not
    return _Copy(sha256=digest, size=file.size, item_count=0)


class _Target:
    """One dataset being filled: its next index and its statistics."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.next_index = 0
        self.stats = DatasetStats()

    def row(self, item: ParsedItem) -> tuple:
        row = (
            self.dataset.pk,
            self.next_index,
            item.line_number,
            item.raw.decode("utf-8"),  # the line as uploaded: already checked to be valid JSON
            item.message_count,
            item.char_count,
            item.has_tools,
        )
        self.next_index += 1
        self.stats.add(item)
        return row


class _ItemWriter:
    """Writes item rows as they come, skipping the ORM's per-object cost.

    PostgreSQL: one COPY stream for the whole file, so that the server stores rows while the next
    lines are parsed. Elsewhere: executemany in batches of IMPORT_BATCH_SIZE.
    """

    def __init__(self) -> None:
        table = connection.ops.quote_name(DatasetItem._meta.db_table)
        columns = ", ".join(connection.ops.quote_name(column) for column in _ITEM_COLUMNS)
        self._stack = contextlib.ExitStack()
        self._copy = None
        self._rows: list[tuple] = []
        self._cursor = self._stack.enter_context(connection.cursor())
        if connection.vendor == "postgresql":
            self._copy = self._stack.enter_context(
                self._cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN")
            )
        else:
            placeholders = ", ".join(["%s"] * len(_ITEM_COLUMNS))
            self._insert = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"

    def write(self, row: tuple) -> None:
        if self._copy is not None:
            self._copy.write_row(row)
            return
        self._rows.append(row)
        if len(self._rows) >= IMPORT_BATCH_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._cursor.executemany(self._insert, self._rows)
            self._rows.clear()

    def __enter__(self) -> _ItemWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is None:
            self._flush()
        return self._stack.__exit__(exc_type, exc, traceback)


class _Rollback(Exception):
    pass


def _import_items(
    stored: Path,
    *,
    fields: dict[str, Any],
    split: str,
    carve: EvalCarve | None,
    eval_positions: frozenset[int],
    max_line_bytes: int,
    max_errors: int,
) -> UploadResult:
    errors: list[dict[str, Any]] = []
    error_count = 0
    try:
        with transaction.atomic(), open(stored, "rb") as stream:
            train = _Target(Dataset.objects.create(**fields, split=split))
            evaluation = None
            if carve is not None:
                evaluation = _Target(
                    Dataset.objects.create(
                        owner_id=train.dataset.owner_id,
                        name=f"{fields['name'][:193]} (eval)",
                        description=f"Eval split carved off “{fields['name']}” ({_describe_carve(carve)}).",
                        split=DatasetSplit.EVAL,
                        derived_from=train.dataset,
                    )
                )
            position = 0
            with _ItemWriter() as writer:
                for record in iter_records(stream, max_line_bytes=max_line_bytes):
                    pacing.step_aside()
                    if isinstance(record, LineError):
                        error_count += 1
                        if len(errors) < max_errors:
                            errors.append({"line": record.line_number, "error": record.reason})
                        continue
                    if error_count:
                        continue  # nothing more is stored; the rest is only checked
                    target = evaluation if position in eval_positions else train
                    position += 1
                    writer.write(target.row(record))
                if error_count:
                    raise _Rollback
            if position == 0:
                raise DatasetError("The file holds no items (every line is blank).")
            for target in (train, evaluation):
                if target is None:
                    continue
                stats = target.stats.as_dict()
                if target is evaluation:
                    stats["carved"] = {
                        "description": _describe_carve(carve),
                        **carve.as_dict(),
                        "from_dataset": train.dataset.pk,
                    }
                target.dataset.item_count = target.next_index
                target.dataset.stats = stats
                target.dataset.save(update_fields=["item_count", "stats", "updated_at"])
    except _Rollback:
        invalid = Dataset.objects.create(
            **fields, split=split, status=DatasetStatus.INVALID, errors=errors, error_count=error_count
        )
        return UploadResult(dataset=invalid)
    return UploadResult(dataset=train.dataset, eval_dataset=evaluation.dataset if evaluation else None)


# --- the import helper process -----------------------------------------------------------------------
#
# Parsing and checking every line and streaming the rows to PostgreSQL is most of an upload's CPU
# (~75 % of ~0.5 s per 50 MB, py-spy), and in a web process all of it holds the GIL that the pages'
# threads and the event loop need: twenty uploads at once stretched every page of those processes by
# seconds, whatever the threads' OS priority (bench/bench_load.py). An upload with a declared length
# is served whole by the web process's helper (rftweb/upload_lane.py), and this runs there. One that
# reaches Django in the web process (a chunked body) hands the file, once it is on disk, to the same
# helper (experiments/import_helper.py), which imports it at a lower OS priority (RFT_UPLOAD_NICE) on
# its own database connection and answers with the datasets' ids; the request's thread waits without
# holding the GIL.


def _import_in_helper(stored: Path, *, fields: dict[str, Any], **arguments) -> UploadResult:
    helper = import_helper.pool()
    fields = dict(fields)
    owner = fields.pop("owner")
    try:
        dataset_id, eval_id = helper.submit(
            import_helper.run, str(stored), owner.pk, {**arguments, "fields": fields}
        ).result()
    except BrokenProcessPool as exc:  # the helper died (killed, out of memory): the next upload starts one
        import_helper.discard(helper)
        raise DatasetError(
            "The import stopped unexpectedly; nothing was stored. Upload the file again."
        ) from exc
    datasets = Dataset.objects.in_bulk([pk for pk in (dataset_id, eval_id) if pk is not None])
    return UploadResult(dataset=datasets[dataset_id], eval_dataset=datasets.get(eval_id))


def _describe_carve(carve: EvalCarve) -> str:
    what = f"{carve.fraction:g} of the items" if carve.fraction is not None else f"{carve.count} items"
    return f"{what}, seed {carve.seed}"


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"
