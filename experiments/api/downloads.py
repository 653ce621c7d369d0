"""What a user takes away from a run, over the API (token or session), streamed:

GET  /api/v1/runs/{id}/checkpoints/                  the checkpoints, each with its adapter's URL
GET  /api/v1/runs/{id}/download/adapter.zip[?step=N] the final (or latest) adapter, or step N's
GET  /api/v1/runs/{id}/merged/                       the merged model's build status
POST /api/v1/runs/{id}/merged/                       build it in a worker (202)
GET  /api/v1/runs/{id}/download/merged.zip           the merged model, once built
GET  /api/v1/runs/{id}/download/metrics.csv          one row per step, one column per metric
GET  /api/v1/runs/{id}/download/rollouts.jsonl       every rollout, one JSON object per line
"""

from __future__ import annotations

from django.http import FileResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from .. import selectors
from ..models import Checkpoint
from ..selectors import checkpoints as checkpoint_selectors
from ..services import artifacts


class DownloadRenderer(BaseRenderer):
    """Lets any Accept header through to a file response; errors still render as JSON."""

    media_type = "*/*"
    format = "download"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data, "application/json", renderer_context)


def metrics_csv_response(run) -> StreamingHttpResponse:
    """The run's metrics CSV, streamed (the run page's download link answers the same)."""
    response = StreamingHttpResponse(artifacts.metrics_csv_rows(run=run), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}-metrics.csv"'
    return response


def rollouts_jsonl_response(run) -> StreamingHttpResponse:
    """The run's rollouts as JSON Lines, streamed (the run page's download link answers the same)."""
    response = StreamingHttpResponse(
        artifacts.rollouts_jsonl_lines(run=run), content_type="application/x-ndjson"
    )
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}-rollouts.jsonl"'
    return response


def _run(request, run_id: int):
    return get_object_or_404(selectors.runs_for(user=request.user), pk=run_id)


MISSING = OpenApiResponse(description='{"detail": why the file is not there (yet)}')


class _DownloadView(GenericAPIView):
    renderer_classes = [JSONRenderer, DownloadRenderer]
    serializer_class = None  # answers files, not serialized objects

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if isinstance(response, Response):  # an error: JSON whatever the client accepts for files
            response.content_type = "application/json"
        return response


class AdapterDownloadView(_DownloadView):
    @extend_schema(
        operation_id="runs_download_adapter",
        parameters=[
            OpenApiParameter(
                "step", int, description="A checkpoint's step; omitted: the final adapter, else the latest."
            )
        ],
        responses={(200, "application/zip"): OpenApiTypes.BINARY, 404: MISSING},
        tags=["runs"],
    )
    def get(self, request, run_id: int):
        """The PEFT adapter as a zip (adapter_config.json, adapter_model.safetensors): load it with
        `peft.PeftModel.from_pretrained(base_model, directory)`."""
        run = _run(request, run_id)
        step = request.query_params.get("step")
        if step is not None and not step.isdigit():
            raise ValidationError({"step": "a step number"})
        try:
            archive, filename = artifacts.adapter_zip(run=run, step=int(step) if step else None)
        except artifacts.ArtifactMissing as exc:
            raise NotFound(str(exc)) from exc
        return FileResponse(archive, as_attachment=True, filename=filename, content_type="application/zip")


class CheckpointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    metrics = serializers.DictField(child=serializers.FloatField(), help_text="Eval metrics at this step.")
    adapter_available = serializers.BooleanField(
        help_text="False once pruned (not among the latest keep_checkpoints or the keep_best_checkpoints best)."
    )
    adapter_url = serializers.CharField(help_text="GET it for this checkpoint's adapter zip.")
    reward = serializers.FloatField(allow_null=True, help_text="Train reward at this step.")
    eval_reward = serializers.FloatField(allow_null=True)
    eval = serializers.DictField(child=serializers.FloatField(), help_text="Eval reward and pass@k.")
    available = serializers.BooleanField(help_text="The same as adapter_available.")
    eval_rank = serializers.IntegerField(allow_null=True, help_text="1 = the best kept by eval reward.")


class CheckpointListView(GenericAPIView):
    serializer_class = CheckpointSerializer
    pagination_class = None

    @extend_schema(operation_id="runs_checkpoints", responses=CheckpointSerializer(many=True), tags=["runs"])
    def get(self, request, run_id: int):
        """The run's checkpoints, oldest first, each with the URL of its adapter, its eval metrics and
        its rank by eval reward among the kept ones."""
        run = _run(request, run_id)
        adapter_url = reverse("api-run-download-adapter", kwargs={"run_id": run.pk})
        metrics = {
            checkpoint.step: checkpoint.metrics or {} for checkpoint in Checkpoint.objects.filter(run=run)
        }
        rows = [
            {
                **row,
                "metrics": {
                    k: v for k, v in metrics.get(row["step"], {}).items() if isinstance(v, int | float)
                },
                "adapter_available": row["available"],
                "adapter_url": request.build_absolute_uri(f"{adapter_url}?step={row['step']}"),
            }
            for row in reversed(checkpoint_selectors.run_checkpoints(run=run))
        ]
        return Response(CheckpointSerializer(rows, many=True).data)


class MergedStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["not_built", "queued", "building", "ready", "failed"])
    error = serializers.CharField(allow_blank=True, help_text="Why the last build failed.")
    updated_at = serializers.FloatField(allow_null=True, help_text="Unix time of the last change.")
    download_url = serializers.CharField(allow_null=True, help_text="Set when the status is ready.")
    detail = serializers.CharField(required=False, help_text="What happened (POST).")


class MergedView(GenericAPIView):
    serializer_class = MergedStatusSerializer

    def _answer(self, request, run, *, code: int = 200, detail: str | None = None) -> Response:
        state = artifacts.merged_status(run=run)
        url = reverse("api-run-download-merged", kwargs={"run_id": run.pk})
        payload = {
            "status": state.status,
            "error": state.error,
            "updated_at": state.updated_at,
            "download_url": request.build_absolute_uri(url) if state.status == "ready" else None,
        }
        if detail:
            payload["detail"] = detail
        return Response(MergedStatusSerializer(payload).data, status=code)

    @extend_schema(operation_id="runs_merged_status", responses=MergedStatusSerializer, tags=["runs"])
    def get(self, request, run_id: int):
        """Where the merged model (base + adapter as plain weights) stands."""
        return self._answer(request, _run(request, run_id))

    @extend_schema(
        operation_id="runs_merged_build",
        request=None,
        responses={
            202: MergedStatusSerializer,
            409: OpenApiResponse(description='{"detail": no adapter yet}'),
        },
        tags=["runs"],
    )
    def post(self, request, run_id: int):
        """Build the merged model (base + the final or latest adapter) in a worker, as the run page's
        "Build merged model" does (202, status `queued`); 409 while the run has no adapter yet.
        GET this URL for the build's progress."""
        run = _run(request, run_id)
        try:
            artifacts.request_merged_model(run=run)
        except artifacts.ArtifactMissing as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return self._answer(
            request,
            run,
            code=status.HTTP_202_ACCEPTED,
            detail="Building the merged model in a worker; GET this URL for its status.",
        )


class MergedDownloadView(_DownloadView):
    @extend_schema(
        operation_id="runs_download_merged",
        responses={(200, "application/zip"): OpenApiTypes.BINARY, 404: MISSING},
        tags=["runs"],
    )
    def get(self, request, run_id: int):
        """The merged model as a zip (load it with `AutoModelForCausalLM.from_pretrained`)."""
        run = _run(request, run_id)
        try:
            archive, filename = artifacts.merged_model_zip(run=run)
        except artifacts.ArtifactMissing as exc:
            state = artifacts.merged_status(run=run)
            raise NotFound(
                f"{exc} (status: {state.status}{': ' + state.error if state.error else ''})"
            ) from exc
        return FileResponse(archive, as_attachment=True, filename=filename, content_type="application/zip")


class MetricsCsvView(_DownloadView):
    @extend_schema(
        operation_id="runs_download_metrics_csv",
        responses={(200, "text/csv"): OpenApiTypes.BINARY},
        tags=["runs"],
    )
    def get(self, request, run_id: int):
        """Every metric of every step as CSV (one row per step, one column per metric)."""
        return metrics_csv_response(_run(request, run_id))


class RolloutsJsonlView(_DownloadView):
    @extend_schema(
        operation_id="runs_download_rollouts_jsonl",
        responses={(200, "application/x-ndjson"): OpenApiTypes.BINARY},
        tags=["runs"],
    )
    def get(self, request, run_id: int):
        """Every rollout (messages, tool calls, scores, rewards) as JSON Lines."""
        return rollouts_jsonl_response(_run(request, run_id))


urlpatterns = [
    path("runs/<int:run_id>/checkpoints/", CheckpointListView.as_view(), name="api-run-checkpoints"),
    path(
        "runs/<int:run_id>/download/adapter.zip",
        AdapterDownloadView.as_view(),
        name="api-run-download-adapter",
    ),
    path("runs/<int:run_id>/merged/", MergedView.as_view(), name="api-run-merged"),
    path(
        "runs/<int:run_id>/download/merged.zip", MergedDownloadView.as_view(), name="api-run-download-merged"
    ),
    path("runs/<int:run_id>/download/metrics.csv", MetricsCsvView.as_view(), name="api-run-download-metrics"),
    path(
        "runs/<int:run_id>/download/rollouts.jsonl",
        RolloutsJsonlView.as_view(),
        name="api-run-download-rollouts",
    ),
]
