"""Dataset pages through the Django test client: upload form, 413, duplicates, the dataset page, delete."""

import pytest
from dataset_files import GREP_TOOL, item, jsonl, valid_file
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from experiments.models import Dataset
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token(client) -> str:
    client.get("/datasets/upload/")
    return client.cookies["csrftoken"].value


def upload(client, data: bytes, *, json=True, **fields):
    headers = {"Accept": "application/json"} if json else {}
    payload = {"file": SimpleUploadedFile("shop.jsonl", data), "split": "train", **fields}
    return client.post("/datasets/upload/", payload, headers={"X-CSRFToken": csrf_token(client), **headers})


def test_pages_need_a_login():
    assert Client().get("/datasets/").status_code == 302
    assert Client().get("/datasets/upload/").status_code == 302


def test_upload_without_csrf_token_is_refused(client):
    response = client.post("/datasets/upload/", {"file": SimpleUploadedFile("a.jsonl", valid_file(2))})
    assert response.status_code == 403 and not Dataset.objects.exists()


def test_upload_redirects_to_the_dataset_page_with_stats_and_items(client):
    response = upload(client, jsonl([item(i, tools=[GREP_TOOL]) if i == 1 else item(i) for i in range(30)]))
    assert response.status_code == 201
    dataset = Dataset.objects.get()
    assert response.json() == {"redirect": f"/datasets/{dataset.pk}/", "status": "ready"}
    assert dataset.name == "shop"
    page = client.get(f"/datasets/{dataset.pk}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Imported “shop”: 30 items." in html
    assert 'id="chart-messages"' in html and "vendor/plotly-basic.min.js" in html
    assert "Question 0: which files compute totals?" in html and "Item 19" in html and "Item 20" not in html
    assert '<code class="ds-tool">grep</code>' in html
    next_page = client.get(f"/datasets/{dataset.pk}/", {"after": 19}, headers={"HX-Request": "true"})
    assert "Item 20" in next_page.content.decode() and "<html" not in next_page.content.decode()
    search = client.get(f"/datasets/{dataset.pk}/", {"q": "Question 7:"}).content.decode()
    assert "Item 7" in search and "Item 8" not in search
    own_tools = client.get(f"/datasets/{dataset.pk}/", {"tools": "1"}).content.decode()
    assert "Items that carry their own tools" in own_tools
    assert (
        "Item 1</strong>" in own_tools
        and "Item 0</strong>" not in own_tools
        and "Item 2</strong>" not in own_tools
    )


def test_the_first_page_of_items_is_rendered_once_and_other_pages_and_searches_are_not_kept(
    client, django_assert_num_queries
):
    from django.core.cache import cache

    upload(client, jsonl([item(i) for i in range(30)]))
    dataset = Dataset.objects.get()
    key = f"dataset-items:{dataset.pk}:{dataset.created_at.timestamp()}:0"
    cache.delete(key)
    first = client.get(f"/datasets/{dataset.pk}/").content.decode()
    # again: the user, the dataset, its derived sets and the runs using it; not its items
    with django_assert_num_queries(4):
        again = client.get(f"/datasets/{dataset.pk}/").content.decode()
    browser = first.split('<div id="item-browser">')[1].split("</section>")[0]
    assert (
        again.split('<div id="item-browser">')[1].split("</section>")[0] == browser and "Item 19" in browser
    )
    assert cache.get(key) and cache.get(key) in first
    for _ in range(2):
        with django_assert_num_queries(3):  # the user, the dataset, its items: a later page is read each time
            pager = client.get(f"/datasets/{dataset.pk}/", {"after": 19}, headers={"HX-Request": "true"})
        assert "Item 20" in pager.content.decode() and "Item 19<" not in pager.content.decode()
    client.get(f"/datasets/{dataset.pk}/", {"q": "Question 7:"})
    with django_assert_num_queries(5):  # a search reads the items every time
        search = client.get(f"/datasets/{dataset.pk}/", {"q": "Question 7:"}).content.decode()
    assert "Item 7" in search and "Item 8" not in search


def test_broken_file_shows_the_error_table_and_report(client):
    response = upload(client, jsonl([item(0), b"{oops", item(2), b'{"messages": []}']), json=False)
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == f"/datasets/{dataset.pk}/"
    html = client.get(response.url).content.decode()
    assert "2 invalid lines: nothing was imported." in html
    assert '<td class="num mono">2</td>' in html and '<td class="num mono">4</td>' in html
    report = client.get(f"/datasets/{dataset.pk}/errors.csv")
    text = b"".join(report.streaming_content).decode()
    assert report["Content-Disposition"].startswith("attachment") and text.splitlines()[1].startswith(
        '2,"invalid JSON'
    )


def test_a_large_upload_is_hashed_as_it_arrives_and_moved_into_place(
    client, settings, media_root, tmp_path, monkeypatch
):
    """Past FILE_UPLOAD_MAX_MEMORY_SIZE Django spools the upload to a temporary file; it is hashed on
    the way in and that very file becomes the stored one (no second pass, nothing left behind)."""
    import hashlib

    from experiments.services import datasets as dataset_services

    class NoSecondPass:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the upload was read again to hash and copy it")

    monkeypatch.setattr(dataset_services, "_HashingCopier", NoSecondPass)

    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "spool")
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
    (tmp_path / "spool").mkdir()
    body = valid_file(2000)
    assert len(body) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE
    response = upload(client, body)
    assert response.status_code == 201, response.content
    dataset = Dataset.objects.get()
    assert dataset.item_count == 2000 and dataset.file_size == len(body)
    assert dataset.file_sha256 == hashlib.sha256(body).hexdigest()
    stored = media_root / dataset.file_path
    assert stored.read_bytes() == body and stored.stat().st_mode & 0o777 == 0o644
    assert list((tmp_path / "spool").iterdir()) == []  # moved, not copied
    duplicate = upload(client, body)  # the hash taken on the way in finds the same file again
    assert duplicate.status_code == 409 and Dataset.objects.count() == 1
    assert sorted(path.name for path in (media_root / "datasets").iterdir()) == [stored.name]


def test_duplicate_and_form_errors(client):
    first = upload(client, valid_file(3)).json()
    duplicate = upload(client, valid_file(3))
    assert duplicate.status_code == 409
    assert (
        "already uploaded" in duplicate.json()["errors"]["file"][0]
        and duplicate.json()["existing_url"] == first["redirect"]
    )
    carve = upload(
        client, valid_file(4), split="eval", carve_eval="on", eval_mode="fraction", eval_fraction="0.5"
    )
    assert carve.status_code == 400 and "train file" in carve.json()["errors"]["carve_eval"][0]
    page = upload(client, valid_file(3), json=False)
    assert page.status_code == 409 and "already uploaded" in page.content.decode()


def test_oversize_upload_gets_413(client, settings, media_root):
    settings.RFT_MAX_UPLOAD_BYTES = 1000
    response = upload(client, valid_file(30))
    assert response.status_code == 413 and "upload limit" in response.json()["errors"]["file"][0]
    assert not Dataset.objects.exists() and not (media_root / "datasets").exists()


def test_carve_from_the_form(client):
    response = upload(client, valid_file(10), carve_eval="on", eval_mode="count", eval_count="4", seed="2")
    assert response.status_code == 201
    names = dict(Dataset.objects.values_list("name", "item_count"))
    assert names == {"shop": 6, "shop (eval)": 4}


def test_delete_refused_for_a_dataset_used_by_a_run_then_allowed(client, user):
    upload(client, valid_file(2))
    dataset = Dataset.objects.get()
    run = RunFactory(owner=user, train_dataset=dataset, name="nightly")
    token = client.cookies["csrftoken"].value
    refused = client.post(f"/datasets/{dataset.pk}/delete/", headers={"X-CSRFToken": token}, follow=True)
    assert "cannot be deleted: it is used by 1 run (“nightly”)" in refused.content.decode()
    run.delete()
    deleted = client.post(f"/datasets/{dataset.pk}/delete/", headers={"X-CSRFToken": token}, follow=True)
    assert "Deleted “shop”." in deleted.content.decode() and not Dataset.objects.exists()


def test_other_users_datasets_are_not_found(client, other_user):
    theirs = Dataset.objects.create(owner=other_user, name="secret")
    assert client.get(f"/datasets/{theirs.pk}/").status_code == 404
    assert "secret" not in client.get("/datasets/").content.decode()


def test_oversize_upload_without_javascript_shows_the_form_with_the_message(client, settings):
    settings.RFT_MAX_UPLOAD_BYTES = 1000
    response = upload(client, valid_file(30), json=False)
    assert response.status_code == 413
    html = response.content.decode()
    assert "larger than the upload limit of 1000 bytes" in html and 'id="upload-form"' in html
