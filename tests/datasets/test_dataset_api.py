"""/api/v1/datasets/: multipart upload, 400 with line errors, 409 duplicate, 413 oversize, items, errors, delete."""

import csv
import io

import pytest
from dataset_files import GREP_TOOL, item, jsonl, valid_file
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from experiments.models import Dataset, DatasetItem
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/datasets/"


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def post_file(api, data: bytes, filename="tasks.jsonl", **fields):
    return api.post(URL, {"file": SimpleUploadedFile(filename, data), **fields}, format="multipart")


def test_upload_list_detail(api):
    response = post_file(api, valid_file(12), description="demo")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["dataset"]["name"] == "tasks" and body["dataset"]["item_count"] == 12
    assert body["eval_dataset"] is None and body["errors"] == []
    dataset_id = body["dataset"]["id"]
    listed = api.get(URL).json()
    assert [row["id"] for row in listed["results"]] == [dataset_id]
    detail = api.get(f"{URL}{dataset_id}/").json()
    assert detail["stats"]["item_count"] == 12 and detail["status"] == "ready"


def test_upload_with_eval_carve(api):
    response = post_file(api, valid_file(20), name="shop", eval_count=5, seed=3)
    assert response.status_code == 201
    body = response.json()
    assert body["dataset"]["item_count"] == 15 and body["eval_dataset"]["item_count"] == 5
    assert (
        body["eval_dataset"]["split"] == "eval"
        and body["eval_dataset"]["derived_from"] == body["dataset"]["id"]
    )
    refused = post_file(api, valid_file(4), filename="other.jsonl", split="eval", eval_fraction=0.5)
    assert refused.status_code == 400 and "train file" in str(refused.json())


def test_invalid_file_answers_400_with_line_errors_and_imports_nothing(api):
    data = jsonl([item(0), b"[]", item(2), b'{"messages": [{"role": "robot", "content": "x"}]}'])
    response = post_file(api, data)
    assert response.status_code == 400
    body = response.json()
    assert body["dataset"]["status"] == "invalid" and body["dataset"]["error_count"] == 2
    assert [e["line"] for e in body["errors"]] == [2, 4]
    assert not DatasetItem.objects.exists()
    errors = api.get(f"{URL}{body['dataset']['id']}/errors/").json()
    assert errors["error_count"] == 2 and errors["errors"][1]["error"].startswith('messages[0].role "robot"')
    report = api.get(errors["report_url"])
    assert report.status_code == 200 and report["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(report.streaming_content).decode())))
    assert rows[0] == ["line", "error"] and [r[0] for r in rows[1:]] == ["2", "4"]


def test_duplicate_upload_answers_409_with_the_existing_dataset(api):
    first = post_file(api, valid_file(3)).json()["dataset"]["id"]
    again = post_file(api, valid_file(3), filename="copy.jsonl")
    assert again.status_code == 409 and again.json()["existing_id"] == first
    assert Dataset.objects.count() == 1


def test_oversize_upload_answers_413_before_anything_is_stored(api, settings, media_root):
    settings.RFT_MAX_UPLOAD_BYTES = 2000
    response = post_file(api, valid_file(40))
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]
    assert not Dataset.objects.exists() and not (media_root / "datasets").exists()


def test_items_keyset_pages_and_search(api):
    dataset_id = post_file(api, jsonl([item(i, color="red" if i % 2 else "blue") for i in range(7)])).json()[
        "dataset"
    ]["id"]
    page = api.get(f"{URL}{dataset_id}/items/", {"limit": 3}).json()
    assert [r["index"] for r in page["results"]] == [0, 1, 2] and page["next_after"] == 2
    assert page["results"][0]["data"] == item(0, color="blue")
    second = api.get(page["next"]).json()
    assert [r["index"] for r in second["results"]] == [3, 4, 5]
    third = api.get(second["next"]).json()
    assert [r["index"] for r in third["results"]] == [6] and third["next"] is None
    red = api.get(f"{URL}{dataset_id}/items/", {"q": "red"}).json()
    assert [r["index"] for r in red["results"]] == [1, 3, 5]


def test_items_with_their_own_tools(api):
    rows = [item(i, tools=[GREP_TOOL]) if i in (2, 5) else item(i) for i in range(7)]
    dataset_id = post_file(api, jsonl(rows)).json()["dataset"]["id"]
    page = api.get(f"{URL}{dataset_id}/items/", {"has_tools": "true"}).json()
    assert [(r["index"], r["has_tools"]) for r in page["results"]] == [(2, True), (5, True)]


def test_users_see_and_delete_only_their_own(api, other_user):
    theirs = APIClient()
    theirs.force_authenticate(other_user)
    dataset_id = post_file(theirs, valid_file(2)).json()["dataset"]["id"]
    assert api.get(f"{URL}{dataset_id}/").status_code == 404
    assert api.get(f"{URL}{dataset_id}/items/").status_code == 404
    assert api.delete(f"{URL}{dataset_id}/").status_code == 404
    assert api.get(URL).json()["results"] == []
    assert APIClient().get(URL).status_code in (401, 403)


def test_delete_refused_while_a_run_uses_it(api, user):
    dataset_id = post_file(api, valid_file(2)).json()["dataset"]["id"]
    RunFactory(owner=user, train_dataset_id=dataset_id, name="weekly")
    refused = api.delete(f"{URL}{dataset_id}/")
    assert refused.status_code == 409 and "weekly" in refused.json()["detail"]
    Dataset.objects.get(pk=dataset_id).train_runs.all().delete()
    assert api.delete(f"{URL}{dataset_id}/").status_code == 204
    assert not Dataset.objects.filter(pk=dataset_id).exists()


def test_openapi_schema_documents_the_dataset_endpoints_without_warnings(capsys):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    captured = capsys.readouterr()
    dataset_warnings = [
        line for line in (captured.err + captured.out).splitlines() if "dataset" in line.lower()
    ]
    assert dataset_warnings == []
    paths = schema["paths"]
    upload = paths["/api/v1/datasets/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"201", "400", "409", "413"} <= set(upload["responses"])
    assert "/api/v1/datasets/{id}/items/" in paths and "/api/v1/datasets/{id}/errors/" in paths
    assert "text/csv" in paths["/api/v1/datasets/{id}/errors/report/"]["get"]["responses"]["200"]["content"]
    assert "409" in paths["/api/v1/datasets/{id}/"]["delete"]["responses"]
