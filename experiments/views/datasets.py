"""Dataset pages: the list, the upload form (drag and drop, progress), a dataset's page, delete."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.safestring import mark_safe
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from .. import selectors
from ..api.datasets import error_report_response
from ..forms.datasets import DatasetUploadForm
from ..models.dataset import DatasetStatus
from ..selectors import datasets as dataset_selectors
from ..services import datasets as dataset_services

ERRORS_SHOWN = 200


def dataset_list(request):
    datasets = selectors.datasets_for(user=request.user).select_related("derived_from")
    return render(request, "experiments/dataset_list.html", {"datasets": datasets})


@csrf_exempt  # checked below, after the size check, so that an oversize body is never parsed
@require_http_methods(["GET", "POST"])
def dataset_upload(request):
    wants_json = "application/json" in request.headers.get("Accept", "")
    max_bytes = settings.RFT_MAX_UPLOAD_BYTES
    if request.method == "GET":
        return _upload_page(request, DatasetUploadForm())
    if _content_length(request) > max_bytes:
        message = str(dataset_services.UploadTooLarge(max_bytes=max_bytes))
        return _upload_failed(
            request, DatasetUploadForm(), {"file": [message]}, status=413, wants_json=wants_json
        )
    refused = CsrfViewMiddleware(lambda request: None).process_view(request, None, (), {})
    if refused is not None:
        return refused
    form = DatasetUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _upload_failed(request, form, form.errors, status=400, wants_json=wants_json)
    values = form.cleaned_data
    try:
        result = dataset_services.upload_dataset(
            owner=request.user,
            file=values["file"],
            name=values["name"],
            description=values["description"],
            split=values["split"],
            carve=values["carve"],
        )
    except dataset_services.UploadTooLarge as exc:
        return _upload_failed(request, form, {"file": [str(exc)]}, status=413, wants_json=wants_json)
    except dataset_services.DuplicateUpload as exc:
        extra = {"existing_url": reverse("dataset-page", args=[exc.existing.pk])}
        return _upload_failed(
            request, form, {"file": [str(exc)]}, status=409, wants_json=wants_json, extra=extra
        )
    except dataset_services.DatasetError as exc:
        return _upload_failed(request, form, {"file": [str(exc)]}, status=400, wants_json=wants_json)
    dataset = result.dataset
    if result.ok:
        text = f"Imported “{dataset.name}”: {dataset.item_count:,} items."
        if result.eval_dataset is not None:
            text += f" Eval split “{result.eval_dataset.name}”: {result.eval_dataset.item_count:,} items."
        messages.success(request, text)
    else:
        messages.error(
            request, f"“{dataset.name}” has {dataset.error_count:,} invalid lines: nothing was imported."
        )
    url = reverse("dataset-page", args=[dataset.pk])
    if wants_json:
        return JsonResponse({"redirect": url, "status": dataset.status}, status=201 if result.ok else 200)
    return redirect(url)


def _upload_page(request, form, *, status: int = 200, file_errors: list[str] | None = None):
    context = {
        "form": form,
        "max_upload_bytes": settings.RFT_MAX_UPLOAD_BYTES,
        "file_errors": file_errors or [],
    }
    return render(request, "experiments/dataset_upload.html", context, status=status)


def _upload_failed(request, form, errors, *, status: int, wants_json: bool, extra: dict | None = None):
    if wants_json:
        return JsonResponse(
            {"errors": {key: list(value) for key, value in errors.items()}, **(extra or {})}, status=status
        )
    if not form.is_bound:  # refused before the body was read: nothing to bind the form to
        return _upload_page(request, form, status=status, file_errors=list(errors.get("file", [])))
    for field, problems in errors.items():
        if field in form.fields and not form.has_error(field):
            for problem in problems:
                form.add_error(field, problem)
    return _upload_page(request, form, status=status)


# A dataset's items never change once imported (they go only with the dataset): its first page of
# them, the one every visit opens, is rendered once and kept. Other pages and searches are not kept:
# any number of them can be asked for, and a search's words are the user's. The key holds the
# dataset's creation time as well as its id: a database started afresh beside a Redis that kept its
# keys gives ids again.
ITEM_PAGE_CACHE_SECONDS = 3600


def _item_browser_html(dataset, *, after, before, query: str, with_tools: bool) -> str:
    first_page = after is None and before is None and not query
    key = (
        f"dataset-items:{dataset.pk}:{dataset.created_at.timestamp()}:{int(with_tools)}"
        if first_page
        else None
    )
    if key is not None and (html := cache.get(key)) is not None:
        return mark_safe(html)
    item_page = dataset_selectors.dataset_item_page(
        dataset=dataset, after=after, before=before, query=query, with_tools=with_tools
    )
    # The filters, carried by the pager's links.
    filters = urlencode(
        {key: value for key, value in (("q", query), ("tools", "1" if with_tools else "")) if value}
    )
    html = render_to_string(
        "experiments/dataset_items.html",
        {"dataset": dataset, "page": item_page, "filters": filters + "&" if filters else ""},
    )
    if key is not None:
        cache.set(key, str(html), timeout=ITEM_PAGE_CACHE_SECONDS)
    return html


def dataset_page(request, dataset_id: int):
    dataset = get_object_or_404(selectors.datasets_for(user=request.user), pk=dataset_id)
    query, with_tools = request.GET.get("q", "").strip(), request.GET.get("tools") == "1"
    items_html = _item_browser_html(
        dataset,
        after=_int_or_none(request.GET.get("after")),
        before=_int_or_none(request.GET.get("before")),
        query=query,
        with_tools=with_tools,
    )
    if request.htmx:
        return HttpResponse(items_html)
    context = {
        "dataset": dataset,
        "items_html": items_html,
        "query": query,
        "with_tools": with_tools,
        "stats": dataset.stats,
        "fields": dataset_selectors.field_presence(dataset=dataset),
        "roles": dataset_selectors.role_counts(dataset=dataset),
        "tool_names": dataset_selectors.tool_name_counts(dataset=dataset),
        "charts": dataset_selectors.dataset_charts(dataset=dataset),
        "errors": dataset.errors[:ERRORS_SHOWN],
        "errors_not_shown": max(0, dataset.error_count - min(len(dataset.errors), ERRORS_SHOWN)),
        "runs": dataset_selectors.runs_using_dataset(dataset=dataset)[:20],
        "derived": dataset.derived.all(),
        "is_invalid": dataset.status == DatasetStatus.INVALID,
    }
    return render(request, "experiments/dataset_detail.html", context)


@require_POST
def dataset_delete(request, dataset_id: int):
    dataset = get_object_or_404(selectors.datasets_for(user=request.user), pk=dataset_id)
    try:
        dataset_services.delete_dataset(dataset=dataset)
    except dataset_services.DatasetInUse as exc:
        messages.error(request, str(exc))
        return redirect("dataset-page", dataset_id=dataset.pk)
    messages.success(request, f"Deleted “{dataset.name}”.")
    return redirect("dataset-list")


def dataset_errors_csv(request, dataset_id: int) -> HttpResponse:
    dataset = get_object_or_404(selectors.datasets_for(user=request.user), pk=dataset_id)
    return error_report_response(dataset)


def _content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


urlpatterns = [
    path("", dataset_list, name="dataset-list"),
    path("upload/", dataset_upload, name="dataset-upload"),
    path("<int:dataset_id>/", dataset_page, name="dataset-page"),
    path("<int:dataset_id>/delete/", dataset_delete, name="dataset-delete"),
    path("<int:dataset_id>/errors.csv", dataset_errors_csv, name="dataset-errors-csv"),
]
