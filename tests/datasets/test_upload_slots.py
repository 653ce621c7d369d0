"""Uploads wait for one of the web process's import slots (experiments/heavy_work.py); when the slots
are taken and the queue is full, an upload is refused at once with 503 and Retry-After, before its
body is read, and nothing is stored; once a slot frees up, the same upload imports."""

import threading

import pytest
from dataset_files import valid_file
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from experiments import heavy_work
from experiments.models import Dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def one_slot_no_queue(settings):
    settings.RFT_UPLOAD_CONCURRENCY = 1
    settings.RFT_UPLOAD_QUEUE = 0
    heavy_work._slots = None
    taken, release, done = threading.Event(), threading.Event(), threading.Event()

    def other_upload():
        with heavy_work.heavy_upload():
            taken.set()
            release.wait(10)
        done.set()

    thread = threading.Thread(target=other_upload)
    thread.start()
    assert taken.wait(10)
    yield release
    release.set()
    thread.join(10)
    heavy_work._slots = None


def test_a_full_server_answers_503_with_retry_after_and_stores_nothing(user, one_slot_no_queue):
    api = APIClient()
    api.force_authenticate(user)
    upload = {"file": SimpleUploadedFile("tasks.jsonl", valid_file(5))}
    response = api.post("/api/v1/datasets/", upload, format="multipart")
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "importing other uploads" in response.json()["detail"]

    page = Client()
    page.force_login(user)
    form = {"file": SimpleUploadedFile("tasks.jsonl", valid_file(5)), "name": "tasks", "split": "train"}
    answer = page.post("/datasets/upload/", form, HTTP_ACCEPT="application/json")
    assert answer.status_code == 503
    assert answer["Retry-After"] == "30"
    assert "importing other uploads" in answer.json()["errors"]["file"][0]
    assert not Dataset.objects.exists()

    one_slot_no_queue.set()  # the other upload ends: its slot is free again
    for _ in range(100):
        if heavy_work._semaphore().acquire(timeout=0.1):
            heavy_work._semaphore().release()
            break
    again = api.post(
        "/api/v1/datasets/", {"file": SimpleUploadedFile("tasks.jsonl", valid_file(5))}, format="multipart"
    )
    assert again.status_code == 201, again.content
    assert Dataset.objects.get().item_count == 5
