"""States that must tell the truth (issue 17): a readiness report with k = 1, a run cancelled before
its first checkpoint, the cancel notice, fired and quiet trend chips, dataset counts, Try it's
retry wording. Through the real pages (Django test client) and the services behind them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.test import Client

from experiments.models import Checkpoint, Dataset, ReadinessReport, Run, RunStatus
from experiments.selectors import run_state
from experiments.services import run_launch
from experiments.services.readiness import readiness_statistics
from experiments.services.runs import RunStateError, transition_run
from tests.factories import ToolFactory, UserFactory
from tests.http_test_server import Reply, ScriptedServer
from tests.watch.support import build_flagged_run

from .seed import _readiness_report, cancelled_during_baseline, seed_site

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert match, f"#{element_id} not on the page"
    return re.sub(r"\s+", " ", match.group(1)).strip()


# --- readiness with k = 1 ----------------------------------------------------------------------------


def single_sample_rollouts(rewards):
    return [
        {"item_index": i, "reward": r, "tool_calls": 1, "tool_call_names": ["lookup"]}
        for i, r in enumerate(rewards)
    ]


def test_k1_statistics_cannot_judge_variance_and_are_never_ready():
    stats = readiness_statistics(single_sample_rollouts([0.0, 0.0, 0.0, 0.0]))
    assert stats["k"] == 1 and stats["zero_variance"]["items"] == 0
    assert stats["verdict"]["level"] == "unmeasured"
    assert "cannot be measured" in stats["verdict"]["summary"]
    # Varied single samples do not make it ready either: one sample per item says nothing of variance.
    assert readiness_statistics(single_sample_rollouts([0.0, 1.0, 0.5]))["verdict"]["level"] == "unmeasured"
    # k = 2 on the same items judges them (all always 0: not ready).
    two = readiness_statistics(single_sample_rollouts([0.0] * 4) + single_sample_rollouts([0.0] * 4))
    assert two["verdict"]["level"] == "not_ready" and two["zero_variance"]["always_0"] == 1.0


def test_k1_report_page_says_it_cannot_measure_variance_and_shows_no_green():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    report = _readiness_report(user, run=run, k=1, rewards_per_item=[[0], [0], [0], [0]])
    # A report stored before the "unmeasured" level existed said "caveats": shown truthfully anyway.
    stored = dict(report.results, verdict={**report.results["verdict"], "level": "weak"})
    ReadinessReport.objects.filter(pk=report.pk).update(results=stored)
    page = client_for(user).get(f"/readiness/{report.pk}/").content.decode()
    assert text_of(page, "stat-zero") == "not measured"
    assert "Cannot measure with k = 1" in text_of(page, "variance-unmeasured")
    assert 'id="chart-zero-variance"' not in page  # no "100 % varies" bar
    assert "verdict-unmeasured" in page and "verdict-ready" not in page and "verdict-weak" not in page
    assert 'badge succeeded">varies' not in page  # no green "varies" in the per-item table
    assert (
        json.loads(re.search(r'id="readiness-data"[^>]*>(.*?)</script>', page, re.S).group(1))["zeroVariance"]
        is None
    )
    listing = client_for(user).get("/readiness/").content.decode()
    assert "cannot judge" in listing


# --- cancel before the first checkpoint ---------------------------------------------------------------


def test_a_run_cancelled_before_its_first_checkpoint_offers_clone_not_resume():
    user = UserFactory()
    run = cancelled_during_baseline(build_flagged_run(user, steps=1))
    assert "before the first checkpoint: there is nothing to resume" in run.error
    assert "last checkpoint is kept" not in run.error
    state = run_state.run_actions_state(run)
    assert state.nothing_to_resume and not state.can_resume
    page = client_for(user).get(f"/runs/{run.pk}/").content.decode()
    assert 'id="nothing-to-resume"' in page and 'id="resume-run"' not in page
    assert re.search(r'class="button primary" id="clone-run" href="/runs/new/\?clone=', page)
    # The cancel notice is a notice, not an error.
    assert re.search(r'<div class="notice-box" id="run-error"', page)
    # The service refuses a resume the page does not offer.
    with pytest.raises(RunStateError, match="nothing to resume"):
        run_launch.resume_run(run_id=run.pk)


def test_a_run_cancelled_after_a_checkpoint_resumes_from_that_step(tmp_path: Path):
    user = UserFactory()
    run = build_flagged_run(user, steps=2)
    saved = tmp_path / "checkpoint-2"
    saved.mkdir()
    Checkpoint.objects.create(run=run, step=2, path=str(saved), metrics={"reward": 0.5})
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, lease_owner="w")
    transition_run(run_id=run.pk, status=RunStatus.CANCELLED, error=run_state.cancelled_message(run.pk))
    run.refresh_from_db()
    assert run.error == "Cancelled by the user; the checkpoint of step 2 is kept: Resume continues from it."
    page = client_for(user).get(f"/runs/{run.pk}/").content.decode()
    assert text_of(page, "resume-run") == "Resume from step 2"
    assert 'id="nothing-to-resume"' not in page


def test_a_failed_run_says_whether_its_retry_starts_over():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, lease_owner="w")
    transition_run(run_id=run.pk, status=RunStatus.FAILED, error="RuntimeError: out of memory")
    page = client_for(user).get(f"/runs/{run.pk}/").content.decode()
    assert text_of(page, "resume-run") == "Retry from the start"
    assert re.search(r'<div class="error-box" id="run-error"', page)  # a failure is an error


def test_cancel_asks_once_and_its_requested_notice_is_tagged_to_go_when_the_run_stops():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, lease_owner="w")
    client = client_for(user)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert re.search(
        r'data-confirm="Cancel the run “[^"]+”\? It stops after the rollouts in progress\."', page
    )
    followed = client.post(f"/runs/{run.pk}/cancel/", follow=True).content.decode()
    assert re.search(r'<li class="msg-run-pending info">Cancel requested', followed)


# --- trend chips, counts, retry wording ---------------------------------------------------------------


def test_fired_and_quiet_trend_chips_differ_in_markup():
    user = UserFactory()
    run = build_flagged_run(user, steps=4)
    page = client_for(user).get(f"/runs/{run.pk}/").content.decode()
    fired = set(re.findall(r'data-trend="([a-z_0-9]+)" data-state="fired">▲ ', page))
    quiet = set(
        re.findall(r'class="trend quiet" title="[^"]*" data-trend="([a-z_0-9]+)" data-state="quiet"', page)
    )
    assert fired == {"reward_up_eval_down", "reward_up_flagged_up"}
    assert quiet == {"zero_std_collapse"}
    assert "Fired at the latest step" in page


def test_the_dashboard_does_not_count_a_rejected_upload_as_a_dataset():
    user, _pages = seed_site("counter")
    assert Dataset.objects.filter(owner=user, status="invalid").count() == 1
    ready = Dataset.objects.filter(owner=user, status="ready").count()
    page = client_for(user).get("/").content.decode()
    assert re.search(r'data-testid="dataset-count">(\d+)<', page).group(1) == str(ready)
    assert re.search(r'data-testid="rejected-count">\+ 1 rejected upload<', page)


@pytest.fixture
def tool_server():
    server = ScriptedServer()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, b'{"output": "Paris"}'), "sent once"),
        (
            Reply(503, b"busy"),
            "sent once: Try it does not retry; during a run this call would be retried up to 3 times",
        ),
    ],
)
def test_try_it_says_how_often_it_sent_the_call(tool_server, reply, expected):
    user = UserFactory()
    tool_server.routes["/tool"] = lambda request: reply
    tool = ToolFactory(owner=user, url=tool_server.url("/tool"))
    page = client_for(user).post(f"/tools/{tool.pk}/try/", {"arguments": '{"key": "capital"}', "item": ""})
    shown = re.search(r'data-testid="try-attempts">([^<]*)<', page.content.decode()).group(1)
    assert shown == expected
    assert len(tool_server.requests) == 1  # what it says: sent once


def test_try_it_on_a_closed_port_says_a_run_would_retry():
    from tests.conftest import free_port

    user = UserFactory()
    tool = ToolFactory(owner=user, url=f"http://127.0.0.1:{free_port()}/tool")
    page = client_for(user).post(f"/tools/{tool.pk}/try/", {"arguments": '{"key": "capital"}', "item": ""})
    shown = re.search(r'data-testid="try-attempts">([^<]*)<', page.content.decode()).group(1)
    assert shown.startswith("sent once: Try it does not retry")
    assert "1 attempts" not in page.content.decode()


def test_a_clone_lists_its_changed_settings_and_opens_their_sections():
    user = UserFactory()
    run = build_flagged_run(user, steps=1)
    Run.objects.filter(pk=run.pk).update(config={**run.config, "kl_beta": 0.2, "lora_r": 32})
    page = client_for(user).get(f"/runs/new/?clone={run.pk}").content.decode()
    summary = page[
        page.index('id="changed-settings"') : page.index("</section>", page.index('id="changed-settings"'))
    ]
    assert f"Settings copied from “{run.name}” that differ from the defaults" in summary
    assert "KL beta" in summary and "0.2" in summary and "LoRA rank r" in summary
    # The sections holding them are open; an untouched one stays closed.
    assert re.search(r'<details class="card settings-group" data-group="LoRA" open>', page)
    assert re.search(r'<details class="card settings-group" data-group="Optimisation" open>', page)
    assert re.search(r'<details class="card settings-group" data-group="Hardware">', page)
    # Steps, group size and the like are visible without opening anything.
    visible = page[page.index("<h2>Length and pace</h2>") : page.index('id="tools-fieldset"')]
    assert 'name="steps"' in visible and 'name="group_size"' in visible
    # Tools: one heading, each checkbox before its own label.
    assert page.count("<h2>Tools</h2>") == 1
    assert re.search(
        r'<label class="choice" for="id_tools_0"><input type="checkbox" name="tools"[^>]*id="id_tools_0"[^>]*><span class="mono">lookup</span></label>',
        page,
    )
