"""Playground sessions over the API: create one, follow it on its WebSocket, read its result, stop it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from ..models import PlaygroundSession, Run
from ..selectors import playground as playground_selectors
from ..services import playground as playground_services
from .common import OwnedReadOnlyViewSet


class PlaygroundSessionSerializer(serializers.ModelSerializer):
    websocket = serializers.SerializerMethodField(
        help_text="Join it to stream the events (token, tool_call, tool_result, graded, done, per side "
        "'adapter' and 'base'); a session created with start=false starts when it is joined."
    )

    class Meta:
        model = PlaygroundSession
        fields = [
            "id",
            "run",
            "step",
            "item",
            "messages",
            "status",
            "result",
            "error",
            "websocket",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_websocket(self, session: PlaygroundSession) -> str:
        return f"/ws/playground/{session.pk}/"


class PlaygroundCreateSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    step = serializers.IntegerField(required=False, allow_null=True, help_text="Omitted: the final adapter.")
    item = serializers.IntegerField(required=False, allow_null=True, help_text="A dataset item of the run.")
    prompt = serializers.CharField(required=False, allow_blank=True, max_length=4000)
    start = serializers.BooleanField(
        default=False, help_text="Start now, not when the WebSocket is joined (early events may be missed)."
    )


class PlaygroundViewSet(mixins.CreateModelMixin, OwnedReadOnlyViewSet):
    serializer_class = PlaygroundSessionSerializer

    def get_queryset(self):
        return playground_selectors.sessions_for(user=self.request.user)

    @extend_schema(request=PlaygroundCreateSerializer, responses={201: PlaygroundSessionSerializer})
    def create(self, request, *args, **kwargs):
        """A session: the run's adapter at `step` and the base model on an item or a typed prompt."""
        serializer = PlaygroundCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        run = Run.objects.visible_to(request.user).filter(pk=data["run"]).first()
        if run is None:
            raise ValidationError({"run": ["No such run of yours."]})
        try:
            session = playground_services.create_session(
                owner=request.user,
                run=run,
                step=data.get("step"),
                item_id=data.get("item"),
                prompt=data.get("prompt", ""),
            )
        except playground_services.PlaygroundError as exc:
            raise ValidationError({"detail": [str(exc)]}) from exc
        if data["start"]:
            playground_services.start_session(session_id=session.pk)
            session.refresh_from_db()
        return Response(PlaygroundSessionSerializer(session).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: PlaygroundSessionSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        """Stop the session: both sides end within a token."""
        session = playground_services.request_stop(session_id=self.get_object().pk)
        return Response(PlaygroundSessionSerializer(session).data)
