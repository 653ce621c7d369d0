"""Importing uploads into the database: whole or nothing, the original kept, duplicates, eval carve, delete."""

import hashlib
import io
from pathlib import Path

import pytest
from dataset_files import GREP_TOOL, item, jsonl, valid_file
from django.core.files.uploadedfile import SimpleUploadedFile

from experiments.models import Dataset, DatasetItem
from experiments.selectors.datasets import (
    dataset_error_report,
    dataset_item_page,
    dataset_items,
    field_presence,
    role_counts,
    tool_name_counts,
)
from experiments.services.datasets import (
    DatasetError,
    DatasetInUse,
    DuplicateUpload,
    EvalCarve,
    UploadTooLarge,
    delete_dataset,
    upload_dataset,
)
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db


def upload(user, data: bytes, name="tasks", **kwargs):
    return upload_dataset(owner=user, file=io.BytesIO(data), name=name, **kwargs)


def stored_files(media_root: Path) -> list[Path]:
    folder = media_root / "datasets"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_valid_file_is_imported_with_counts_stats_and_its_original(user, media_root):
    data = b"\xef\xbb\xbf" + jsonl([item(0, tools=[GREP_TOOL]), b"", item(1), item(2)], newline=b"\r\n")
    result = upload(user, data, description="three tasks")
    dataset = result.dataset
    assert result.ok and dataset.status == "ready" and dataset.item_count == 3
    assert dataset.file_sha256 == hashlib.sha256(data).hexdigest() and dataset.file_size == len(data)
    assert (media_root / dataset.file_path).read_bytes() == data
    items = list(DatasetItem.objects.filter(dataset=dataset).order_by("index"))
    assert [(i.index, i.line_number, i.has_tools, i.message_count) for i in items] == [
        (0, 1, True, 2),
        (1, 3, False, 2),
        (2, 4, False, 2),
    ]
    assert dataset_items(dataset_id=dataset.pk) == [item(0, tools=[GREP_TOOL]), item(1), item(2)]
    assert dataset.stats["fields"] == {"messages": 3, "answer": 3, "tools": 1}
    presence = field_presence(dataset=dataset)
    assert [(f["name"], f["count"], f["percent"]) for f in presence] == [
        ("answer", 3, 100.0),
        ("messages", 3, 100.0),
        ("tools", 1, 33.3),
    ]
    assert role_counts(dataset=dataset) == [("system", 3), ("user", 3)]
    assert tool_name_counts(dataset=dataset) == [("grep", 1)]
    assert dataset.stats["items_with_tools"] == 1


def test_file_with_errors_imports_nothing_and_records_every_error(user, media_root):
    rows = [item(i) for i in range(3000)]  # more than one insert batch before the first error
    rows[2500] = b"{broken"
    rows[2998] = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    result = upload(user, jsonl(rows), max_errors=1)
    dataset = result.dataset
    assert not result.ok and dataset.status == "invalid"
    assert dataset.item_count == 0 and not DatasetItem.objects.exists()
    assert Dataset.objects.count() == 1  # only the record of the invalid upload
    assert dataset.error_count == 2 and dataset.errors == [
        {"line": 2501, "error": dataset.errors[0]["error"]}
    ]
    # The capped list is stored; the report checks the kept file again and has them all.
    report = [(e.line_number, e.reason) for e in dataset_error_report(dataset=dataset)]
    assert [line for line, _ in report] == [2501, 2999]
    assert "last message must be from the user" in report[1][1]


def test_identical_file_is_detected_and_nothing_new_is_stored(user, other_user, media_root):
    data = valid_file(5)
    first = upload(user, data).dataset
    with pytest.raises(DuplicateUpload) as caught:
        upload(user, data, name="again")
    assert caught.value.existing == first and "already uploaded" in str(caught.value)
    assert Dataset.objects.filter(owner=user).count() == 1 and len(stored_files(media_root)) == 1
    # Another user's identical file is theirs to upload.
    assert upload(other_user, data).ok


def test_too_large_upload_is_refused_before_anything_is_stored(user, media_root):
    data = valid_file(50)
    with pytest.raises(UploadTooLarge):
        upload_dataset(
            owner=user, file=SimpleUploadedFile("big.jsonl", data), name="big", max_bytes=len(data) - 1
        )
    # A stream with no declared size is cut off while it is copied.
    with pytest.raises(UploadTooLarge):
        upload(user, data, max_bytes=1000)
    assert not Dataset.objects.exists() and stored_files(media_root) == []


def test_empty_file_is_refused(user, media_root):
    with pytest.raises(DatasetError, match="no items"):
        upload(user, b"\n\n  \r\n")
    assert not Dataset.objects.exists() and stored_files(media_root) == []


def test_eval_split_is_carved_by_fraction_reproducibly(user):
    data = valid_file(100)
    result = upload(user, data, carve=EvalCarve(fraction=0.2, seed=7))
    train, evaluation = result.dataset, result.eval_dataset
    assert (train.item_count, evaluation.item_count) == (80, 20)
    assert evaluation.split == "eval" and evaluation.derived_from == train
    train_answers = [row["answer"] for row in dataset_items(dataset_id=train.pk)]
    eval_answers = [row["answer"] for row in dataset_items(dataset_id=evaluation.pk)]
    assert sorted(train_answers + eval_answers, key=int) == [str(i) for i in range(100)]
    assert eval_answers == sorted(eval_answers, key=int)  # file order is kept in both splits
    assert list(
        DatasetItem.objects.filter(dataset=evaluation).values_list("index", flat=True).order_by("index")
    ) == list(range(20))
    # The same seed picks the same items (for another user, since the file is a duplicate for this one).
    from tests.factories import UserFactory

    again = upload(UserFactory(), data, carve=EvalCarve(fraction=0.2, seed=7))
    assert [row["answer"] for row in dataset_items(dataset_id=again.eval_dataset.pk)] == eval_answers
    other_seed = upload(UserFactory(), data, carve=EvalCarve(fraction=0.2, seed=8))
    assert [row["answer"] for row in dataset_items(dataset_id=other_seed.eval_dataset.pk)] != eval_answers


def test_eval_split_by_count_and_impossible_splits(user):
    result = upload(user, valid_file(10), carve=EvalCarve(count=3, seed=1))
    assert (result.dataset.item_count, result.eval_dataset.item_count) == (7, 3)
    with pytest.raises(DatasetError, match="no training items"):
        upload(user, valid_file(3), name="tiny", carve=EvalCarve(count=3))
    with pytest.raises(DatasetError):
        EvalCarve(fraction=1.5)
    with pytest.raises(DatasetError):
        EvalCarve(fraction=0.1, count=2)


def test_dataset_used_by_a_run_cannot_be_deleted(user, media_root):
    used = upload(user, valid_file(3), name="used").dataset
    RunFactory(owner=user, train_dataset=used, name="nightly")
    with pytest.raises(DatasetInUse, match="used by 1 run .*nightly"):
        delete_dataset(dataset=used)
    assert (
        Dataset.objects.filter(pk=used.pk).exists() and DatasetItem.objects.filter(dataset=used).count() == 3
    )


def test_unused_dataset_is_deleted_with_items_and_file(user, media_root, django_capture_on_commit_callbacks):
    dataset = upload(user, valid_file(4)).dataset
    path = media_root / dataset.file_path
    with django_capture_on_commit_callbacks(execute=True):
        delete_dataset(dataset=dataset)
    assert not Dataset.objects.exists() and not DatasetItem.objects.exists() and not path.exists()


def test_item_pages_are_keyset_paginated_and_searchable(user):
    dataset = upload(
        user, jsonl([item(i, topic="café" if i % 10 == 3 else "plain") for i in range(45)])
    ).dataset
    first = dataset_item_page(dataset=dataset, limit=20)
    assert (
        [i.index for i in first.items] == list(range(20))
        and first.next_after == 19
        and first.previous_before is None
    )
    second = dataset_item_page(dataset=dataset, after=first.next_after, limit=20)
    assert [i.index for i in second.items] == list(range(20, 40)) and second.previous_before == 20
    last = dataset_item_page(dataset=dataset, after=second.next_after, limit=20)
    assert [i.index for i in last.items] == list(range(40, 45)) and last.next_after is None
    back = dataset_item_page(dataset=dataset, before=40, limit=20)
    assert [i.index for i in back.items] == list(range(20, 40))
    found = dataset_item_page(dataset=dataset, query="CAFÉ".lower(), limit=20)
    assert [i.index for i in found.items] == [3, 13, 23, 33, 43]
    assert found.items[0].messages[1] == {
        "role": "user",
        "name": "",
        "text": "Question 3: which files compute totals?",
        "tool_calls": [],
    }
    assert '"topic": "café"' in found.items[0].extra_json
