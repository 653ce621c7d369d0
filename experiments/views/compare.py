"""The run comparison: `/compare/?runs=3,7,9&baseline=7` (shareable), its per-item table and one
item's rollouts side by side as partials, and CSV exports. Thin: selectors read, templates render."""

from __future__ import annotations

import csv

from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils.http import urlencode
from django.utils.text import slugify

from .. import selectors
from ..selectors import compare as compare_selectors
from ..selectors.compare import DEFAULT_TOLERANCE, ITEM_STATUSES

# Decimals shown per eval summary metric (3 for rewards and rates).
SUMMARY_DECIMALS = {"tool_calls_p50": 1, "tool_calls_p95": 1, "mean_tokens": 1, "run_time_s": 0}


def _selection(request):
    ids = compare_selectors.parse_run_ids(request.GET.get("runs"))
    try:
        baseline_id = int(request.GET.get("baseline", ""))
    except ValueError:
        baseline_id = None
    return compare_selectors.compare_selection(user=request.user, run_ids=ids, baseline_id=baseline_id)


def _tolerance(request) -> float:
    try:
        value = float(request.GET.get("tolerance", DEFAULT_TOLERANCE))
    except ValueError:
        return DEFAULT_TOLERANCE
    return value if 0 <= value <= 10 else DEFAULT_TOLERANCE


def _against(request) -> int | None:
    value = request.GET.get("against", "")
    return int(value) if value.isdigit() else None


def _items_context(request, selection) -> dict:
    status = request.GET.get("status", "")
    sort = request.GET.get("sort", "delta")
    comparison = compare_selectors.item_comparison(
        runs=selection.runs,
        baseline=selection.baseline,
        against=_against(request),
        status=status if status in ITEM_STATUSES else None,
        sort=sort if sort in ("delta", "-delta", "item") else "delta",
        tolerance=_tolerance(request),
    )
    base_query = {"runs": ",".join(map(str, selection.run_ids))}
    if selection.baseline is not None:
        base_query["baseline"] = selection.baseline.pk
    if comparison["candidate"] is not None:
        base_query["against"] = comparison["candidate"]
    base_query["tolerance"] = comparison["tolerance"]

    def link(**changes) -> str:
        query = {**base_query, "status": comparison["status"] or "", "sort": comparison["sort"], **changes}
        return urlencode({key: value for key, value in query.items() if value not in ("", None)})

    for row in comparison["rows"]:
        row["cells"] = [
            {
                "reward": row["rewards"][run.pk],
                "delta": row["deltas"][run.pk],
                "status": row["statuses"][run.pk],
                "is_candidate": run.pk == comparison["candidate"],
            }
            for run in selection.runs
        ]
    filters = [("all", "All", comparison["total"], link(status=""))]
    filters += [
        (name, name.capitalize(), comparison["counts"][name], link(status=name)) for name in ITEM_STATUSES
    ]
    return {
        "items": comparison,
        "item_filters": filters,
        "sort_links": {
            "delta": link(sort="delta"),
            "delta_desc": link(sort="-delta"),
            "item": link(sort="item"),
        },
        "item_query": link(),
        "candidate_run": next((run for run in selection.runs if run.pk == comparison["candidate"]), None),
        "run_columns": [(run, selection.color(run)) for run in selection.runs],
    }


def compare(request):
    picked = request.GET.getlist("run")
    if picked and not request.GET.get("runs"):
        # The runs list's form without JavaScript sends ?run=3&run=7: answer with the shareable URL.
        ids = compare_selectors.parse_run_ids(",".join(picked))
        return HttpResponseRedirect(f"{reverse('compare')}?{urlencode({'runs': ','.join(map(str, ids))})}")
    selection = _selection(request)
    # The picker's form sent with nothing ticked: say what to do instead of showing the same page.
    nothing_picked = "picked" in request.GET and not picked and not selection.runs
    context = {
        "nothing_picked": nothing_picked,
        "selection": selection,
        "runs": selection.runs,
        "all_runs": selectors.run_rows_for(user=request.user)[:200],
        "max_runs": compare_selectors.MAX_COMPARE_RUNS,
        "show_all_config": request.GET.get("config") == "all",
    }
    if selection.runs:
        colored = [(run, selection.color(run)) for run in selection.runs]
        summary = compare_selectors.eval_summary(runs=selection.runs, baseline=selection.baseline)
        by_run = {entry["run"]: entry for entry in summary["runs"]}
        summary_rows = []
        for metric in summary["metrics"]:
            cells = []
            for run, _color in colored:
                entry = by_run[run.pk]
                delta = entry["deltas"][metric["key"]]
                better = None if not delta else (delta > 0) == metric["higher_is_better"]
                cells.append(
                    {
                        "value": entry["values"][metric["key"]],
                        "delta": delta,
                        "better": better,  # the delta's direction is an improvement (green) or not
                        "decimals": SUMMARY_DECIMALS.get(metric["key"], 3),
                        "best": run.pk in metric["best"],
                        "is_baseline": run.pk == selection.baseline.pk,
                    }
                )
            summary_rows.append({"metric": metric, "cells": cells})
        diff = compare_selectors.config_diff(runs=selection.runs, differences_only=False)
        for row in diff["rows"]:
            row["cells"] = list(zip(row["values"], row["is_default"], strict=True))
        keys = compare_selectors.compare_metric_keys(run_ids=selection.run_ids)
        query = {"runs": ",".join(map(str, selection.run_ids)), "baseline": selection.baseline.pk}
        context.update(
            {
                "colored_runs": colored,
                "mixed_eval_sets": len({run.eval_dataset_id for run in selection.runs}) > 1,
                "summary_rows": summary_rows,
                "summary_steps": [by_run[run.pk] for run in selection.runs],
                "config_diff": diff,
                "query": urlencode(query),
                "tool_calls": compare_selectors.tool_call_distributions(
                    runs=selection.runs, baseline=selection.baseline
                ),
                "page_config": {
                    "runs": selection.describe(),
                    "baseline": selection.baseline.pk,
                    "metricKeys": keys,
                    "seriesUrl": reverse("api-compare-series"),
                    "itemsUrl": reverse("compare-items"),
                    "itemUrl": reverse("compare-item", args=[0]).rsplit("0/", 1)[0],
                },
                **_items_context(request, selection),
            }
        )
    return render(request, "experiments/compare.html", context)


def compare_items(request):
    """The per-item table (a partial the page swaps in when a filter or the sort changes)."""
    selection = _selection(request)
    if not selection.runs:
        return HttpResponse(
            '<div class="empty">Not found or not yours: no runs to compare.</div>', status=404
        )
    return render(
        request,
        "experiments/_compare_items.html",
        {"selection": selection, **_items_context(request, selection)},
    )


def compare_item(request, item_index: int):
    """One eval item's rollouts side by side: the base model's and each run's final eval."""
    selection = _selection(request)
    if not selection.runs:
        return HttpResponse(
            '<div class="empty">Not found or not yours: no runs to compare.</div>', status=404
        )
    columns = compare_selectors.item_rollouts(
        runs=selection.runs, baseline=selection.baseline, item_index=item_index
    )
    return render(
        request,
        "experiments/_compare_item.html",
        {"selection": selection, "item_index": item_index, "columns": columns},
    )


def _csv_response(rows: list[list[str]], filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerows(rows)
    return response


def _csv_name(selection, what: str) -> str:
    return f"compare-{slugify('-'.join(map(str, selection.run_ids)))}-{what}.csv"


def summary_csv(request):
    selection = _selection(request)
    if not selection.runs:
        return HttpResponse(
            "Not found or not yours: no runs to compare.", status=404, content_type="text/plain"
        )
    rows = compare_selectors.summary_csv_rows(runs=selection.runs, baseline=selection.baseline)
    return _csv_response(rows, _csv_name(selection, "summary"))


def items_csv(request):
    selection = _selection(request)
    if not selection.runs:
        return HttpResponse(
            "Not found or not yours: no runs to compare.", status=404, content_type="text/plain"
        )
    rows = compare_selectors.items_csv_rows(
        runs=selection.runs, baseline=selection.baseline, tolerance=_tolerance(request)
    )
    return _csv_response(rows, _csv_name(selection, "items"))


urlpatterns = [
    path("", compare, name="compare"),
    path("items/", compare_items, name="compare-items"),
    path("items/<int:item_index>/", compare_item, name="compare-item"),
    path("summary.csv", summary_csv, name="compare-summary-csv"),
    path("items.csv", items_csv, name="compare-items-csv"),
]
