"""Run comparison over HTTP: config diff, eval summary and tool-call distributions; overlaid metric
series; the per-item comparison; one item's rollouts side by side.

GET /api/v1/compare/?runs=3,7,9&baseline=7&differences_only=true
GET /api/v1/compare/series/?runs=3,7,9&keys=reward,kl&x=step&step_min=&step_max=
GET /api/v1/compare/items/?runs=3,7,9&baseline=7&against=9&status=regressed&sort=delta&tolerance=0.05
GET /api/v1/compare/items/{item}/rollouts/?runs=3,7,9&baseline=7

Runs the caller may not see are listed in `missing` and never read; when none is visible: 404.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from ..selectors import compare as compare_selectors
from ..selectors.compare import DEFAULT_TOLERANCE, ITEM_STATUSES
from ..selectors.metrics import DEFAULT_MAX_POINTS, MAX_POINTS_LIMIT, X_AXES, SeriesRequestError

RUNS_PARAM = OpenApiParameter(
    "runs", str, required=True, description="Comma-separated run ids, in the order to show them."
)
BASELINE_PARAM = OpenApiParameter("baseline", int, description="The baseline run (default: the first).")


class SelectionQuerySerializer(serializers.Serializer):
    runs = serializers.CharField()
    baseline = serializers.IntegerField(required=False)


class CompareRunSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    color = serializers.CharField(help_text="The run's colour in every chart (by its position).")
    is_baseline = serializers.BooleanField()
    last_seq = serializers.IntegerField(help_text="Stream the run's events after this seq for live updates.")
    samples_per_step = serializers.IntegerField()


class ConfigRowSerializer(serializers.Serializer):
    field = serializers.CharField()
    group = serializers.CharField()
    help = serializers.CharField(help_text="The setting's one-line help (empty for identity rows).")
    values = serializers.ListField(child=serializers.CharField(), help_text="Shown value per run, in order.")
    raw = serializers.ListField(
        child=serializers.JSONField(), help_text="Stored value per run (defaults filled in)."
    )
    is_default = serializers.ListField(child=serializers.BooleanField())
    differs = serializers.BooleanField()


class ConfigDiffSerializer(serializers.Serializer):
    runs = serializers.ListField(child=serializers.IntegerField())
    differences_only = serializers.BooleanField()
    total = serializers.IntegerField(help_text="Rows in the full table.")
    differing = serializers.IntegerField(help_text="Rows whose values are not all equal.")
    rows = ConfigRowSerializer(many=True)


class SummaryMetricSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    higher_is_better = serializers.BooleanField()
    best = serializers.ListField(child=serializers.IntegerField(), help_text="Runs with the best value.")


class SummaryRunSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    baseline_step = serializers.IntegerField(allow_null=True)
    final_step = serializers.IntegerField(allow_null=True)
    k = serializers.IntegerField(help_text="Eval rollouts per item.")
    values = serializers.DictField(child=serializers.FloatField(allow_null=True))
    deltas = serializers.DictField(
        child=serializers.FloatField(allow_null=True), help_text="Value minus the baseline run's."
    )


class EvalSummarySerializer(serializers.Serializer):
    baseline = serializers.IntegerField(allow_null=True)
    metrics = SummaryMetricSerializer(many=True)
    runs = SummaryRunSerializer(many=True)


class ToolCallPartSerializer(serializers.Serializer):
    label = serializers.CharField()
    run = serializers.IntegerField(allow_null=True, help_text="Null for the base model (step 0).")
    color = serializers.CharField()
    step = serializers.IntegerField()
    rollouts = serializers.IntegerField()
    histogram = serializers.DictField(child=serializers.IntegerField(), help_text="{tool calls: rollouts}")
    per_tool = serializers.DictField(child=serializers.FloatField(), help_text="{tool: calls per rollout}")


class ToolCallDistributionsSerializer(serializers.Serializer):
    parts = ToolCallPartSerializer(many=True)
    max_calls = serializers.IntegerField()
    tools = serializers.ListField(child=serializers.CharField())


class ComparisonSerializer(serializers.Serializer):
    runs = CompareRunSerializer(many=True)
    baseline = serializers.IntegerField()
    missing = serializers.ListField(child=serializers.IntegerField(), help_text="Not found or not yours.")
    metric_keys = serializers.ListField(child=serializers.CharField())
    config_diff = ConfigDiffSerializer()
    eval_summary = EvalSummarySerializer()
    tool_calls = ToolCallDistributionsSerializer()


class CompareSeriesQuerySerializer(SelectionQuerySerializer):
    keys = serializers.CharField()
    x = serializers.ChoiceField(choices=X_AXES, required=False)
    max_points = serializers.IntegerField(required=False, min_value=3, max_value=MAX_POINTS_LIMIT)
    step_min = serializers.IntegerField(required=False)
    step_max = serializers.IntegerField(required=False)

    def validate(self, attrs):
        # Smoothing moved to the charts (one implementation, static/js/live_chart.js): say so rather
        # than answer an old client's request with unsmoothed points it did not expect.
        if "smoothing" in self.initial_data:
            raise serializers.ValidationError(
                {"smoothing": "Series are returned as stored; smooth them on the client (debiased EMA)."}
            )
        return super().validate(attrs)


class CompareSeriesSerializer(serializers.Serializer):
    x = serializers.ListField(child=serializers.JSONField())
    y = serializers.ListField(child=serializers.FloatField())
    step = serializers.ListField(child=serializers.IntegerField())


class CompareRunSeriesSerializer(serializers.Serializer):
    last_seq = serializers.IntegerField()
    t0 = serializers.FloatField(allow_null=True)
    series = serializers.DictField(child=CompareSeriesSerializer())


class CompareSeriesResponseSerializer(serializers.Serializer):
    x_axis = serializers.ChoiceField(choices=X_AXES)
    max_points = serializers.IntegerField()
    missing = serializers.ListField(child=serializers.IntegerField())
    runs = serializers.DictField(child=CompareRunSeriesSerializer(), help_text="{run id: series}")


class ItemQuerySerializer(SelectionQuerySerializer):
    against = serializers.IntegerField(required=False)
    status = serializers.ChoiceField(choices=ITEM_STATUSES, required=False)
    sort = serializers.ChoiceField(choices=("delta", "-delta", "item"), required=False)
    tolerance = serializers.FloatField(required=False, min_value=0, max_value=10)


class ItemRowSerializer(serializers.Serializer):
    item = serializers.IntegerField()
    prompt = serializers.CharField(allow_blank=True)
    base = serializers.FloatField(allow_null=True, help_text="The base model's mean reward (step 0).")
    rewards = serializers.DictField(
        child=serializers.FloatField(allow_null=True), help_text="{run id: reward}"
    )
    deltas = serializers.DictField(child=serializers.FloatField(allow_null=True))
    statuses = serializers.DictField(child=serializers.CharField(allow_null=True))
    delta = serializers.FloatField(allow_null=True, help_text="The candidate run's delta.")
    status = serializers.CharField(allow_null=True, help_text="The candidate run's status.")


class ItemComparisonSerializer(serializers.Serializer):
    candidate = serializers.IntegerField(allow_null=True)
    reference = serializers.CharField()
    tolerance = serializers.FloatField()
    status = serializers.CharField(allow_null=True)
    sort = serializers.CharField()
    counts = serializers.DictField(child=serializers.IntegerField())
    total = serializers.IntegerField()
    rows = ItemRowSerializer(many=True)


class ToolCallTurnSerializer(serializers.Serializer):
    call_id = serializers.CharField()
    name = serializers.CharField()
    arguments = serializers.CharField()
    result = serializers.CharField(allow_null=True)
    error_type = serializers.CharField(allow_null=True)


class TurnSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_blank=True)
    tool_calls = ToolCallTurnSerializer(many=True)


class ItemRolloutSerializer(serializers.Serializer):
    trace_id = serializers.CharField()
    sample_index = serializers.IntegerField()
    reward = serializers.FloatField(allow_null=True)
    score = serializers.FloatField(allow_null=True)
    tool_calls = serializers.IntegerField()
    tool_call_names = serializers.ListField(child=serializers.CharField())
    completion_tokens = serializers.IntegerField()
    final_answer = serializers.CharField(allow_blank=True)
    turns = TurnSerializer(many=True)


class ItemColumnSerializer(serializers.Serializer):
    label = serializers.CharField()
    run = serializers.IntegerField(allow_null=True, help_text="Null for the base model (step 0).")
    color = serializers.CharField()
    step = serializers.IntegerField()
    rollouts = ItemRolloutSerializer(many=True)


def _selection(request, query_serializer=SelectionQuerySerializer):
    query = query_serializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    params = query.validated_data
    selection = compare_selectors.compare_selection(
        user=request.user,
        run_ids=compare_selectors.parse_run_ids(params["runs"]),
        baseline_id=params.get("baseline"),
    )
    if not selection.runs:
        raise NotFound("Not found or not yours: none of these runs can be compared.")
    return selection, params


class CompareView(GenericAPIView):
    """Config diff, eval summary (with deltas against the baseline run) and tool-call distributions."""

    serializer_class = ComparisonSerializer

    @extend_schema(
        operation_id="compare_runs",
        parameters=[
            RUNS_PARAM,
            BASELINE_PARAM,
            OpenApiParameter(
                "differences_only", bool, description="Config rows that differ only (default true)."
            ),
        ],
        responses=ComparisonSerializer,
    )
    def get(self, request):
        selection, _ = _selection(request)
        differences_only = request.query_params.get("differences_only", "true").lower() not in (
            "0",
            "false",
            "no",
        )
        return Response(
            {
                "runs": selection.describe(),
                "baseline": selection.baseline.pk,
                "missing": selection.missing,
                "metric_keys": compare_selectors.compare_metric_keys(run_ids=selection.run_ids),
                "config_diff": compare_selectors.config_diff(
                    runs=selection.runs, differences_only=differences_only
                ),
                "eval_summary": compare_selectors.eval_summary(
                    runs=selection.runs, baseline=selection.baseline
                ),
                "tool_calls": compare_selectors.tool_call_distributions(
                    runs=selection.runs, baseline=selection.baseline
                ),
            }
        )


class CompareSeriesView(GenericAPIView):
    """Overlaid metric series of several runs, downsampled on the server (per bucket of steps the
    minimum, the maximum and the last point), as stored: smoothing is the charts' display setting."""

    serializer_class = CompareSeriesResponseSerializer

    @extend_schema(
        operation_id="compare_series",
        parameters=[
            RUNS_PARAM,
            OpenApiParameter("keys", str, required=True, description="Comma-separated metric keys."),
            OpenApiParameter("x", str, enum=list(X_AXES), description="The x axis (default step)."),
            OpenApiParameter(
                "max_points", int, description=f"Points per series (default {DEFAULT_MAX_POINTS})."
            ),
            OpenApiParameter("step_min", int, description="Only steps from this one (zoom)."),
            OpenApiParameter("step_max", int, description="Only steps up to this one (zoom)."),
        ],
        responses=CompareSeriesResponseSerializer,
    )
    def get(self, request):
        selection, params = _selection(request, CompareSeriesQuerySerializer)
        keys = [key.strip() for key in params["keys"].split(",") if key.strip()]
        try:
            result = compare_selectors.overlaid_series(
                run_ids=selection.run_ids,
                keys=keys,
                x_axis=params.get("x", "step"),
                max_points=params.get("max_points", DEFAULT_MAX_POINTS),
                step_min=params.get("step_min"),
                step_max=params.get("step_max"),
            )
        except SeriesRequestError as error:
            raise serializers.ValidationError({"x": str(error)}) from None
        result["missing"] = selection.missing
        result["runs"] = {str(run_id): data for run_id, data in result["runs"].items()}
        return Response(result)


class CompareItemsView(GenericAPIView):
    """Per eval item: the base model's reward, each run's final reward, delta and status
    (improved / regressed / unchanged beyond `tolerance`) against the baseline run."""

    serializer_class = ItemComparisonSerializer

    @extend_schema(
        operation_id="compare_items",
        parameters=[
            RUNS_PARAM,
            BASELINE_PARAM,
            OpenApiParameter(
                "against", int, description="The run to filter and sort by (default: the first non-baseline)."
            ),
            OpenApiParameter(
                "status", str, enum=list(ITEM_STATUSES), description="Only items with this status."
            ),
            OpenApiParameter(
                "sort", str, enum=["delta", "-delta", "item"], description="Default delta (worst first)."
            ),
            OpenApiParameter("tolerance", float, description=f"Default {DEFAULT_TOLERANCE}."),
        ],
        responses=ItemComparisonSerializer,
    )
    def get(self, request):
        selection, params = _selection(request, ItemQuerySerializer)
        result = compare_selectors.item_comparison(
            runs=selection.runs,
            baseline=selection.baseline,
            against=params.get("against"),
            status=params.get("status"),
            sort=params.get("sort", "delta"),
            tolerance=params.get("tolerance", DEFAULT_TOLERANCE),
        )
        for row in result["rows"]:
            for name in ("rewards", "deltas", "statuses"):
                row[name] = {str(run_id): value for run_id, value in row[name].items()}
        return Response(result)


class CompareItemRolloutsView(GenericAPIView):
    """One eval item's rollouts: the base model's (step 0) and each run's final eval, with turns."""

    serializer_class = ItemColumnSerializer

    @extend_schema(
        operation_id="compare_item_rollouts",
        parameters=[RUNS_PARAM, BASELINE_PARAM],
        responses=ItemColumnSerializer(many=True),
    )
    def get(self, request, item_index: int):
        selection, _ = _selection(request)
        columns = compare_selectors.item_rollouts(
            runs=selection.runs, baseline=selection.baseline, item_index=item_index
        )
        data = []
        for column in columns:
            rollouts = []
            for entry in column["rollouts"]:
                row = entry["trajectory"]
                rollouts.append(
                    {
                        "trace_id": row.trace_id,
                        "sample_index": row.sample_index,
                        "reward": row.reward,
                        "score": row.score,
                        "tool_calls": row.tool_calls,
                        "tool_call_names": row.tool_call_names,
                        "completion_tokens": row.completion_tokens,
                        "final_answer": row.final_answer,
                        "turns": [
                            {
                                "role": turn.role,
                                "content": turn.content,
                                "tool_calls": [
                                    {
                                        "call_id": call.call_id,
                                        "name": call.name,
                                        "arguments": call.arguments,
                                        "result": call.result,
                                        "error_type": call.error_type,
                                    }
                                    for call in turn.tool_calls
                                ],
                            }
                            for turn in entry["turns"]
                        ],
                    }
                )
            data.append({**{k: column[k] for k in ("label", "run", "color", "step")}, "rollouts": rollouts})
        return Response(data)


urlpatterns = [
    path("compare/", CompareView.as_view(), name="api-compare"),
    path("compare/series/", CompareSeriesView.as_view(), name="api-compare-series"),
    path("compare/items/", CompareItemsView.as_view(), name="api-compare-items"),
    path(
        "compare/items/<int:item_index>/rollouts/",
        CompareItemRolloutsView.as_view(),
        name="api-compare-item-rollouts",
    ),
]
