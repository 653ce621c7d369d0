"""Outside a transaction, an upload is parsed and stored by the web process's import helper: a
spawned process at a lower OS priority with a database connection of its own
(experiments/services/datasets.py), so that an import does not hold the web process's GIL. The
results are the same as an import in the request's thread. (Files under RFT_IMPORT_HELPER_MIN_BYTES,
1 MB by default, import in the request's thread: the hand-off would cost more.)"""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from dataset_files import jsonl, valid_file

from experiments import import_helper
from experiments.models import Dataset, DatasetItem
from experiments.models.dataset import DatasetStatus
from experiments.services import datasets as dataset_services
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def helper(settings):
    settings.RFT_IMPORT_PROCESSES = 1
    settings.RFT_IMPORT_HELPER_MIN_BYTES = 0  # these files are small
    yield
    import_helper.shutdown()


def test_an_upload_imports_in_the_helper_process_with_its_eval_split(helper, media_root):
    user = UserFactory(username="helper-ada")
    result = dataset_services.upload_dataset(
        owner=user,
        file=io.BytesIO(valid_file(30)),
        name="tasks",
        carve=dataset_services.EvalCarve(count=5, seed=1),
    )
    assert import_helper._pool is not None  # the work went to the helper
    assert result.ok
    assert result.dataset.owner == user and result.dataset.item_count == 25
    assert result.eval_dataset.item_count == 5 and result.eval_dataset.derived_from == result.dataset
    assert DatasetItem.objects.filter(dataset=result.dataset).count() == 25
    assert sorted(
        DatasetItem.objects.filter(dataset__owner=user).values_list("line_number", flat=True)
    ) == list(range(1, 31))


def test_a_file_with_bad_lines_is_recorded_invalid_by_the_helper_and_imports_nothing(helper, media_root):
    user = UserFactory(username="helper-bob")
    good = {"messages": [{"role": "user", "content": "hi"}]}
    result = dataset_services.upload_dataset(
        owner=user, file=io.BytesIO(jsonl([good, good]) + b"{not json\n"), name="broken"
    )
    assert import_helper._pool is not None
    assert not result.ok
    assert result.dataset.status == DatasetStatus.INVALID
    assert result.dataset.error_count == 1 and result.dataset.errors[0]["line"] == 3
    assert not DatasetItem.objects.filter(dataset__owner=user).exists()
    assert Dataset.objects.filter(owner=user).count() == 1


def test_a_helper_ends_when_its_web_process_is_killed():
    """A web process killed outright (SIGKILL, out of memory) cannot shut its helper down: the helper
    notices its parent is gone and ends instead of waiting for work forever."""
    script = (
        "import multiprocessing, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from experiments import import_helper\n"
        "pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                           initializer=import_helper.start, initargs=('unused', 0))\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "time.sleep(120)\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    helper = int(parent.stdout.readline())
    assert helper != parent.pid and psutil.pid_exists(helper)
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(helper):
        try:
            if psutil.Process(helper).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    alive = psutil.pid_exists(helper) and psutil.Process(helper).status() != psutil.STATUS_ZOMBIE
    assert not alive, "the helper outlived its web process"


def test_the_helper_sees_the_page_requests_its_web_process_counts(helper):
    """The pacing's "pages are being served" comes from a count in memory shared with the helper."""
    helpers = import_helper.pool()
    read = "__import__('experiments.pacing').pacing._pacer.pages.value"
    before = helpers.submit(eval, read).result(timeout=60)
    for _ in range(3):
        import_helper.page_started()
    assert helpers.submit(eval, read).result(timeout=60) == before + 3
