from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from trainer.config import Setting, settings

from .. import selectors
from ..models import Dataset, Environment, Grader, Run, Tool
from ..selectors import checkpoints as checkpoint_selectors
from ..services import forks, run_launch
from ..services.runs import RunStateError
from .common import OwnedReadOnlyViewSet


class RunSerializer(serializers.ModelSerializer):
    queue_position = serializers.SerializerMethodField()
    forks = serializers.SerializerMethodField(help_text="Ids of the runs forked from this one.")

    class Meta:
        model = Run
        fields = [
            "id",
            "name",
            "status",
            "base_model",
            "config",
            "train_dataset",
            "eval_dataset",
            "tools",
            "mcp_tools",
            "environment",
            "grader",
            "attempt",
            "max_attempts",
            "current_step",
            "total_steps",
            "last_seq",
            "error",
            "cancel_requested",
            "watch_config",
            "paused_by",
            "queue_position",
            "parent",
            "parent_step",
            "forks",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_queue_position(self, run: Run) -> int | None:
        return run_launch.queue_position(run=run)

    def get_forks(self, run: Run) -> list[int]:
        return [fork.pk for fork in checkpoint_selectors.run_lineage(run=run)["forks"]]


class RunForkSerializer(serializers.Serializer):
    step = serializers.IntegerField(
        required=False, allow_null=True, help_text="The checkpoint's step; omitted: the final adapter."
    )
    name = serializers.CharField(max_length=200, required=False)
    config = serializers.DictField(
        required=False,
        help_text="The fork's settings; omitted: the parent's. The LoRA shape must stay the parent's.",
    )


class OwnedPrimaryKeyField(serializers.PrimaryKeyRelatedField):
    """A primary key that must name one of the requesting user's objects."""

    def get_queryset(self):
        return self.queryset.visible_to(self.context["request"].user)


def _schema_field(setting: Setting) -> serializers.Field:
    options = {
        "required": False,
        "allow_null": setting.optional,
        "help_text": f"{setting.help} Default: {'null' if setting.default is None else setting.default}.",
    }
    base = setting.annotation.replace(" | None", "")
    if setting.choices is not None:
        return serializers.ChoiceField(choices=setting.choices, **options)
    fields = {
        "bool": serializers.BooleanField,
        "int": serializers.IntegerField,
        "float": serializers.FloatField,
        "str": serializers.CharField,
        "dict[str, Any]": serializers.DictField,
    }
    return fields.get(base, serializers.JSONField)(**options)


# The API schema of `config`, one property per trainer setting with its help, choices and default
# (read from the trainer's field metadata). Values are validated by the trainer itself.
TrainerConfigSchema = type(
    "TrainerConfig",
    (serializers.Serializer,),
    {setting.name: _schema_field(setting) for setting in settings()},
)


@extend_schema_field(TrainerConfigSchema)
class TrainerConfigField(serializers.DictField):
    pass


class RunCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    base_model = serializers.CharField(
        max_length=500, help_text="Hub id, local path, .gguf path, or `bundled:smollm2-135m-instruct`."
    )
    train_dataset = OwnedPrimaryKeyField(queryset=Dataset.objects.all())
    eval_dataset = OwnedPrimaryKeyField(queryset=Dataset.objects.all(), required=False, allow_null=True)
    tools = OwnedPrimaryKeyField(
        queryset=Tool.objects.all(),
        many=True,
        required=False,
        help_text="Tool ids; omitted or empty: every one of your tools that the datasets' items name.",
    )
    grader = OwnedPrimaryKeyField(queryset=Grader.objects.all())
    environment = OwnedPrimaryKeyField(
        queryset=Environment.objects.all(),
        required=False,
        allow_null=True,
        help_text="A per-rollout environment (start/end lifecycle) for every rollout of the run.",
    )
    mcp_tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        default=list,
        help_text='MCP tools the run may use: [{"server": <MCP server id>, "name": "<tool>"}]; the run '
        "records their schemas as last refreshed.",
    )
    config = TrainerConfigField(
        required=False,
        default=dict,
        help_text="Trainer hyperparameters (TrainerConfig fields); omitted ones take the defaults.",
    )
    start = serializers.BooleanField(
        default=True, help_text="Enqueue at once (false: create only; start later)."
    )
    watch_config = serializers.DictField(
        required=False,
        default=dict,
        help_text='Reward-hacking watch settings, e.g. {"pause": {"enabled": true, "rule": "any", '
        '"threshold": 0.5, "window": 3}}; omitted keys take the defaults.',
    )


class RunEventSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    kind = serializers.CharField()
    step = serializers.IntegerField(allow_null=True)
    payload = serializers.JSONField()
    time = serializers.DateTimeField(allow_null=True)


class RunViewSet(mixins.CreateModelMixin, OwnedReadOnlyViewSet):
    serializer_class = RunSerializer

    def get_queryset(self):
        return checkpoint_selectors.with_forks(
            selectors.runs_for(user=self.request.user).prefetch_related("tools")
        )

    def get_serializer_class(self):
        return RunCreateSerializer if self.action == "create" else RunSerializer

    @extend_schema(request=RunCreateSerializer, responses={201: RunSerializer})
    def create(self, request, *args, **kwargs):
        """Create a run (validated like the form) and enqueue it on the `train` queue."""
        serializer = RunCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            run = run_launch.create_run(
                owner=request.user,
                name=data["name"],
                base_model=data["base_model"],
                train_dataset=data["train_dataset"],
                eval_dataset=data.get("eval_dataset"),
                tools=data.get("tools", []),
                grader=data["grader"],
                config=data.get("config", {}),
                start=data["start"],
                watch_config=data.get("watch_config") or {},
                environment=data.get("environment"),
                mcp_tools=data.get("mcp_tools") or [],
            )
        except run_launch.RunValidationError as exc:
            raise ValidationError(exc.errors) from exc
        return Response(
            RunSerializer(run, context=self.get_serializer_context()).data, status=status.HTTP_201_CREATED
        )

    def _lifecycle(self, change) -> Response:
        run = self.get_object()
        try:
            change(run_id=run.pk)
        except RunStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        run.refresh_from_db()
        return Response(RunSerializer(run, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses={200: RunSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        """Enqueue a run created with `start: false`."""

        def start_run(*, run_id):
            run = Run.objects.get(pk=run_id)
            if run.status != "queued" or run.attempt:
                raise RunStateError("Only a created run that never started can be started; use resume.")
            run_launch.enqueue_run(run_id=run_id)

        return self._lifecycle(start_run)

    @extend_schema(request=None, responses={200: RunSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel: a queued run at once; a running run stops after its current rollouts, keeping its last checkpoint."""
        return self._lifecycle(run_launch.cancel_run)

    @extend_schema(request=None, responses={200: RunSerializer, 409: None})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Resume a failed, cancelled or paused run from its last checkpoint (a new attempt)."""
        return self._lifecycle(run_launch.resume_run)

    @extend_schema(request=RunForkSerializer, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def fork(self, request, pk=None):
        """A new run starting from this run's adapter at `step`, with the given settings."""
        parent = self.get_object()
        serializer = RunForkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        step = data.get("step")
        try:
            run = forks.fork_run(
                owner=request.user,
                parent=parent,
                step=step,
                name=data.get("name") or f"{parent.name} (fork @ {step if step is not None else 'final'})",
                config=data["config"] if "config" in data else parent.config,
            )
        except run_launch.RunValidationError as exc:
            raise ValidationError(exc.errors) from exc
        return Response(
            RunSerializer(run, context=self.get_serializer_context()).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="Only events with seq greater than this.")],
        responses=RunEventSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        """The run's event log (metrics per step, status changes, log lines) after a sequence number."""
        run = self.get_object()
        try:
            after = max(0, int(request.query_params.get("after", 0)))
        except ValueError:
            after = 0
        return Response(selectors.run_events_after(run_id=run.pk, after=after, limit=5000))
