"""The run comparison on stored runs: config diff, eval summary, per-item classification, tool-call
distributions, smoothing, downsampling, exports, the pages and the API, and who may see what."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from experiments.models import MetricPoint
from experiments.selectors import compare as c
from tests.factories import RunFactory
from trainer.config import defaults as trainer_defaults

from .conftest import FINALS

pytestmark = pytest.mark.django_db


def ids(*runs):
    return ",".join(str(run.pk) for run in runs)


# ---- config diff -----------------------------------------------------------------------------


def test_config_diff_shows_only_differing_fields_by_default(compared):
    runs = [compared["A"], compared["B"], compared["C"]]
    diff = c.config_diff(runs=runs)
    fields = {row["field"]: row for row in diff["rows"]}
    assert set(fields) == {"learning_rate", "group_size", "tool_call_penalty"}
    assert fields["group_size"]["values"] == ["8", "8", "16"]  # A and B: the trainer's default
    assert fields["group_size"]["is_default"] == [True, True, False]
    assert fields["learning_rate"]["values"] == ["1e-05", "3e-05", "1e-05"]
    assert diff["differing"] == 3


def test_config_diff_with_the_toggle_shows_every_field_and_identity(compared):
    runs = [compared["A"], compared["B"]]
    diff = c.config_diff(runs=runs, differences_only=False)
    fields = {row["field"]: row for row in diff["rows"]}
    assert set(trainer_defaults()) - {"model"} <= set(fields)  # the model is the base_model row
    assert {"base_model", "train_dataset", "eval_dataset", "tools", "grader"} <= set(fields)
    grader = compared["A"].grader
    assert fields["grader"]["values"][0] == f"exact (#{grader.pk}) v{grader.version}"
    assert fields["lora_r"]["values"] == ["16", "16"] and not fields["lora_r"]["differs"]
    assert diff["total"] == len(diff["rows"]) and diff["differing"] == 1


def test_grader_and_dataset_identity_differences_are_rows_of_the_diff(compared):
    a = compared["A"]
    other = RunFactory(owner=a.owner, config={"learning_rate": 1e-5}, eval_dataset=a.eval_dataset)
    other.grader.version = 3
    other.grader.save()
    other.tools.add(*a.tools.all())
    diff = c.config_diff(runs=[a, other])
    fields = {row["field"]: row for row in diff["rows"]}
    assert set(fields) == {"train_dataset", "grader"}
    assert fields["grader"]["values"][1] == f"{other.grader.name} (#{other.grader.pk}) v3"
    assert fields["train_dataset"]["values"][0] == f"capitals-train (#{a.train_dataset_id})"


# ---- eval summary ------------------------------------------------------------------------------


def test_eval_summary_baseline_final_deltas_and_best(compared):
    a, b, c_run = compared["A"], compared["B"], compared["C"]
    summary = c.eval_summary(runs=[a, b, c_run], baseline=a)
    by_run = {entry["run"]: entry for entry in summary["runs"]}
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert by_run[a.pk]["values"]["baseline_reward"] == pytest.approx(mean([0.0, 0.5, 0.5, 0.0, 0.0, 0.0]))
    assert by_run[b.pk]["values"]["reward"] == pytest.approx(mean(FINALS["B"]))
    assert by_run[b.pk]["deltas"]["reward"] == pytest.approx(mean(FINALS["B"]) - mean(FINALS["A"]))
    # Passing needs a score of 1.0 (the trainer's default threshold): B passes items 0 and 2.
    assert by_run[b.pk]["values"]["pass@1"] == pytest.approx(2 / 6)
    assert by_run[b.pk]["values"]["best_of_k"] == pytest.approx(2 / 6)
    assert by_run[b.pk]["k"] == 2 and by_run[b.pk]["final_step"] == 20
    assert by_run[a.pk]["values"]["run_time_s"] == 100 and by_run[c_run.pk]["values"]["run_time_s"] == 300
    assert by_run[c_run.pk]["values"]["tool_calls_p95"] == 1
    best = {metric["key"]: metric["best"] for metric in summary["metrics"]}
    assert best["reward"] == [b.pk]
    assert best["run_time_s"] == [a.pk]  # lower is better
    assert best["grader_error_rate"] == []  # all equal: nothing to highlight


# ---- per-item comparison -----------------------------------------------------------------------


def test_items_are_classified_against_the_baseline_run_with_a_tolerance(compared):
    a, b, c_run = compared["A"], compared["B"], compared["C"]
    result = c.item_comparison(runs=[a, b, c_run], baseline=a, sort="item")
    assert result["candidate"] == b.pk
    statuses = [row["status"] for row in result["rows"]]
    assert statuses == ["improved", "regressed", "unchanged", "improved", "unchanged", "unchanged"]
    assert result["counts"] == {"improved": 2, "regressed": 1, "unchanged": 3}
    assert [row["statuses"][c_run.pk] for row in result["rows"]] == [
        "unchanged", "unchanged", "regressed", "unchanged", "unchanged", "improved",
    ]  # fmt: skip
    # The baseline run itself is measured against the base model (its step 0).
    assert [row["statuses"][a.pk] for row in result["rows"]][:3] == ["improved", "unchanged", "improved"]
    assert [row["base"] for row in result["rows"]] == [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
    assert result["rows"][4]["delta"] == pytest.approx(0.02)
    # A tighter tolerance turns the 0.02 gain into an improvement.
    tight = c.item_comparison(runs=[a, b], baseline=a, tolerance=0.01, status="improved", sort="item")
    assert [row["item"] for row in tight["rows"]] == [0, 3, 4]


def test_items_filter_and_sort_by_delta_for_the_chosen_run(compared):
    a, b, c_run = compared["A"], compared["B"], compared["C"]
    regressed = c.item_comparison(runs=[a, b, c_run], baseline=a, status="regressed")
    assert [row["item"] for row in regressed["rows"]] == [1]
    against_c = c.item_comparison(runs=[a, b, c_run], baseline=a, against=c_run.pk, sort="delta")
    assert [row["item"] for row in against_c["rows"]][0] == 2  # -1.0: the worst first
    assert [row["item"] for row in against_c["rows"]][-1] == 5  # +0.8: the best last
    best_first = c.item_comparison(runs=[a, b, c_run], baseline=a, against=c_run.pk, sort="-delta")
    assert best_first["rows"][0]["item"] == 5


# ---- tool calls --------------------------------------------------------------------------------


def test_tool_call_distributions_base_model_against_each_final_eval(compared):
    a, b = compared["A"], compared["B"]
    result = c.tool_call_distributions(runs=[a, b], baseline=a)
    labels = [part["label"] for part in result["parts"]]
    assert labels == ["Base model (step 0)", "run-A", "run-B"]
    base = result["parts"][0]
    assert base["histogram"]["9"] == 1 and base["histogram"]["12"] == 1  # the runaway tail
    assert result["max_calls"] == 12
    assert max(int(k) for k in result["parts"][2]["histogram"]) == 2  # gone after training
    assert set(result["tools"]) == {"search", "read_file"}
    assert result["parts"][2]["rollouts"] == 12
    assert result["parts"][2]["per_tool"]["search"] == pytest.approx(
        (1 + 1 + 2 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1) / 12
    )


# ---- curves ------------------------------------------------------------------------------------


def test_series_api_keeps_each_series_global_min_and_max(client, compared):
    a, b = compared["A"], compared["B"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    spikes = {a.pk: (1234, 2345), b.pk: (77, 2999)}
    for run in (a, b):
        MetricPoint.objects.filter(run=run).delete()
        low, high = spikes[run.pk]
        MetricPoint.objects.bulk_create(
            MetricPoint(
                run=run,
                seq=step + 1,
                step=step,
                key="kl",
                value=-9.0 if step == low else 9.0 if step == high else (step % 17) / 17,
                wall_time=start + timedelta(seconds=step),
            )
            for step in range(3000)
        )
    client.force_login(a.owner)
    response = client.get(reverse("api-compare-series"), {"runs": ids(a, b), "keys": "kl", "max_points": 300})
    assert response.status_code == 200
    for run in (a, b):
        series = response.json()["runs"][str(run.pk)]["series"]["kl"]
        assert len(series["y"]) <= 300
        assert min(series["y"]) == -9.0 and max(series["y"]) == 9.0
        assert series["step"][series["y"].index(-9.0)] == spikes[run.pk][0]
        assert "y_smooth" not in series  # smoothing is the charts' (static/js/live_chart.js)
    refused = client.get(reverse("api-compare-series"), {"runs": ids(a), "keys": "kl", "smoothing": 0.5})
    assert refused.status_code == 400 and "smooth them on the client" in refused.json()["smoothing"][0]
    # Zoomed in: only the steps in view, at full resolution.
    zoomed = client.get(
        reverse("api-compare-series"), {"runs": ids(a), "keys": "kl", "step_min": 100, "step_max": 199}
    ).json()
    assert zoomed["runs"][str(a.pk)]["series"]["kl"]["step"] == list(range(100, 200))


def test_series_api_samples_axis_uses_each_runs_rollouts_per_step(client, compared):
    a, c_run = compared["A"], compared["C"]
    client.force_login(a.owner)
    data = client.get(
        reverse("api-compare-series"), {"runs": ids(a, c_run), "keys": "reward", "x": "samples"}
    ).json()
    assert data["runs"][str(a.pk)]["series"]["reward"]["x"][:2] == [0, 32]  # 4 prompts × 8
    assert data["runs"][str(c_run.pk)]["series"]["reward"]["x"][:2] == [0, 64]  # 4 × 16


# ---- visibility --------------------------------------------------------------------------------


def test_someone_elses_run_is_not_found_or_not_yours(client, compared, stranger):
    a = compared["A"]
    theirs = RunFactory(owner=stranger, name="secret-run")
    client.force_login(a.owner)
    page = client.get(reverse("compare"), {"runs": ids(a, theirs)})
    assert page.status_code == 200
    text = page.content.decode()
    assert f"Not found or not yours: run {theirs.pk}" in text
    assert "secret-run" not in text
    only_theirs = client.get(reverse("compare"), {"runs": ids(theirs)}).content.decode()
    assert "Not found or not yours" in only_theirs and "secret-run" not in only_theirs
    api = client.get(reverse("api-compare"), {"runs": ids(theirs)})
    assert api.status_code == 404 and "not yours" in api.json()["detail"]
    partial = client.get(reverse("api-compare"), {"runs": ids(a, theirs)}).json()
    assert partial["missing"] == [theirs.pk] and [run["id"] for run in partial["runs"]] == [a.pk]
    series = client.get(reverse("api-compare-series"), {"runs": ids(a, theirs), "keys": "reward"}).json()
    assert list(series["runs"]) == [str(a.pk)]
    assert client.get(reverse("compare-item", args=[0]), {"runs": ids(theirs)}).status_code == 404
    assert client.get(reverse("compare-items-csv"), {"runs": ids(theirs)}).status_code == 404


# ---- pages, partials, exports, API ---------------------------------------------------------------


def test_compare_page_renders_every_section_with_stable_colours(client, compared):
    a, b, c_run = compared["A"], compared["B"], compared["C"]
    client.force_login(a.owner)
    response = client.get(reverse("compare"), {"runs": ids(c_run, a, b), "baseline": a.pk})
    assert response.status_code == 200
    text = response.content.decode()
    for marker in (
        'id="compare-charts"',
        'id="eval-summary"',
        'id="config-diff"',
        'id="tool-call-histogram"',
        'id="items-table"',
    ):
        assert marker in text
    assert 'class="compare-table differences-only"' in text  # differences only, by default
    assert 'data-field="lora_r"' in text  # …but every row is there for the toggle
    config = response.context["page_config"]
    assert [run["id"] for run in config["runs"]] == [c_run.pk, a.pk, b.pk]
    assert [run["color"] for run in config["runs"]] == list(c.RUN_COLORS[:3])
    assert config["baseline"] == a.pk and [run["is_baseline"] for run in config["runs"]] == [
        False,
        True,
        False,
    ]
    assert {"reward", "loss"} <= set(config["metricKeys"])
    all_config = client.get(reverse("compare"), {"runs": ids(a, b), "config": "all"}).content.decode()
    assert 'class="compare-table"' in all_config


def test_items_partial_filters_and_the_item_view_shows_every_runs_rollouts(client, compared):
    a, b = compared["A"], compared["B"]
    client.force_login(a.owner)
    partial = client.get(
        reverse("compare-items"), {"runs": ids(a, b), "baseline": a.pk, "status": "regressed"}
    )
    rows = partial.context["items"]["rows"]
    assert [row["item"] for row in rows] == [1]
    assert 'data-item="1"' in partial.content.decode()
    item = client.get(reverse("compare-item", args=[1]), {"runs": ids(a, b), "baseline": a.pk})
    text = item.content.decode()
    assert [column["label"] for column in item.context["columns"]] == [
        "Base model (step 0)",
        "run-A",
        "run-B",
    ]
    assert "answer 1 from run-B at 20" in text and "answer 1 from run-A at 0" in text
    assert 'data-tool-call="search"' in text  # the turns with their tool calls


def test_csv_exports_summary_and_items(client, compared):
    a, b = compared["A"], compared["B"]
    client.force_login(a.owner)
    summary = client.get(reverse("compare-summary-csv"), {"runs": ids(a, b)})
    assert summary["Content-Type"].startswith("text/csv")
    assert "attachment" in summary["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(summary.content.decode())))
    assert rows[0][:3] == ["run_id", "run", "is_baseline"] and "delta_reward" in rows[0]
    assert [row[1] for row in rows[1:]] == ["run-A", "run-B"]
    items = list(
        csv.reader(
            io.StringIO(client.get(reverse("compare-items-csv"), {"runs": ids(a, b)}).content.decode())
        )
    )
    assert len(items) == 7  # header + 6 items
    header = items[0]
    status_b = header.index(f"run-B #{b.pk} status")
    assert [row[status_b] for row in items[1:]] == [
        "improved",
        "regressed",
        "unchanged",
        "improved",
        "unchanged",
        "unchanged",
    ]


def test_api_comparison_and_items_and_item_rollouts(client, compared):
    a, b = compared["A"], compared["B"]
    client.force_login(a.owner)
    data = client.get(reverse("api-compare"), {"runs": ids(a, b), "baseline": b.pk}).json()
    assert data["baseline"] == b.pk
    assert [row["field"] for row in data["config_diff"]["rows"]] == ["learning_rate"]
    everything = client.get(reverse("api-compare"), {"runs": ids(a, b), "differences_only": "false"}).json()
    assert len(everything["config_diff"]["rows"]) == everything["config_diff"]["total"]
    assert {part["label"] for part in data["tool_calls"]["parts"]} >= {"Base model (step 0)"}
    items = client.get(reverse("api-compare-items"), {"runs": ids(a, b), "status": "improved"}).json()
    assert [row["item"] for row in items["rows"]] == [0, 3] and items["counts"]["regressed"] == 1
    columns = client.get(reverse("api-compare-item-rollouts", args=[3]), {"runs": ids(a, b)}).json()
    assert [len(column["rollouts"]) for column in columns] == [2, 2, 2]
    assert columns[2]["rollouts"][0]["turns"][2]["tool_calls"][0]["name"] == "search"


def test_runs_list_offers_checkboxes_and_the_selection_becomes_a_shareable_url(client, compared):
    a, b = compared["A"], compared["B"]
    client.force_login(a.owner)
    text = client.get(reverse("run-list")).content.decode()
    assert f'name="run" value="{a.pk}"' in text and "Compare selected" in text
    response = client.get(reverse("compare"), {"run": [str(b.pk), str(a.pk)]})
    assert response.status_code == 302
    assert response["Location"] == f"/compare/?runs={b.pk}%2C{a.pk}"


def test_up_to_twelve_runs_each_with_its_own_colour(owner):
    runs = [RunFactory(owner=owner) for _ in range(c.MAX_COMPARE_RUNS + 1)]
    selection = c.compare_selection(user=owner, run_ids=[run.pk for run in runs])
    assert len(selection.runs) == c.MAX_COMPARE_RUNS >= 10
    assert selection.too_many == [runs[-1].pk]
    assert selection.baseline == runs[0]
    colors = [entry["color"] for entry in selection.describe()]
    assert len(set(colors)) == c.MAX_COMPARE_RUNS
    chosen = c.compare_selection(user=owner, run_ids=[runs[0].pk, runs[1].pk], baseline_id=runs[1].pk)
    assert chosen.baseline == runs[1]
    assert [entry["color"] for entry in chosen.describe()] == colors[:2]  # by position, not by baseline
