"""/api/v1/datasets/: upload (multipart), list, detail, items (keyset pages), errors, delete."""

from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from ..models import Dataset
from ..models.dataset import DatasetSplit
from ..selectors import datasets as dataset_selectors
from ..services import datasets as dataset_services

UPLOAD_ERRORS_SHOWN = 100


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "description",
            "split",
            "status",
            "item_count",
            "file_sha256",
            "file_size",
            "stats",
            "error_count",
            "derived_from",
            "created_at",
        ]
        read_only_fields = fields


class DatasetUploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="The JSONL file (one JSON object with a `messages` list per line)."
    )
    name = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="Defaults to the file name."
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")
    split = serializers.ChoiceField(choices=DatasetSplit.choices, default=DatasetSplit.TRAIN)
    eval_fraction = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="Carve this fraction (0..1) off a train file as an eval split.",
    )
    eval_count = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Carve this many items off as an eval split."
    )
    seed = serializers.IntegerField(required=False, default=0, help_text="Seeds the choice of eval items.")

    def validate(self, attrs):
        fraction, count = attrs.get("eval_fraction"), attrs.get("eval_count")
        attrs["carve"] = None
        if fraction is not None or count is not None:
            if attrs["split"] != DatasetSplit.TRAIN:
                raise serializers.ValidationError("An eval split can only be carved off a train file.")
            try:
                attrs["carve"] = dataset_services.EvalCarve(
                    fraction=fraction, count=count, seed=attrs["seed"]
                )
            except dataset_services.DatasetError as exc:
                raise serializers.ValidationError(str(exc)) from exc
        if not attrs.get("name"):
            attrs["name"] = attrs["file"].name.rsplit("/", 1)[-1].removesuffix(".jsonl")[:200] or "dataset"
        return attrs


class LineErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(help_text="1-based line number in the uploaded file")
    error = serializers.CharField()


class DatasetUploadResultSerializer(serializers.Serializer):
    dataset = DatasetSerializer(help_text="The imported dataset, or the invalid upload's record (no items).")
    eval_dataset = DatasetSerializer(
        allow_null=True, help_text="The carved eval split, if one was asked for."
    )
    errors = LineErrorSerializer(
        many=True, help_text=f"The first {UPLOAD_ERRORS_SHOWN} errors (empty when valid)."
    )


class DatasetItemSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="0-based position among the dataset's items")
    line_number = serializers.IntegerField(help_text="1-based line in the uploaded file")
    message_count = serializers.IntegerField()
    char_count = serializers.IntegerField()
    has_tools = serializers.BooleanField()
    data = serializers.JSONField(help_text="The row as uploaded")


class DatasetItemPageSerializer(serializers.Serializer):
    results = DatasetItemSerializer(many=True)
    next_after = serializers.IntegerField(allow_null=True, help_text="Pass as `after` for the next page.")
    next = serializers.CharField(allow_null=True, help_text="The next page's URL (null on the last page).")


class DatasetErrorsSerializer(serializers.Serializer):
    status = serializers.CharField()
    error_count = serializers.IntegerField(help_text="All errors in the file")
    errors = LineErrorSerializer(many=True, help_text="The first errors (the stored list is capped)")
    report_url = serializers.CharField(help_text="Every error as CSV (line, error)")


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes) else str(data).encode()


def _content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


ITEM_PARAMETERS = [
    OpenApiParameter("after", int, description="Items with an index greater than this (keyset cursor)."),
    OpenApiParameter(
        "limit", int, description=f"Page size (default 50, at most {dataset_selectors.MAX_ITEM_PAGE_SIZE})."
    ),
    OpenApiParameter("q", str, description="Only items whose JSON text contains this (case-insensitive)."),
    OpenApiParameter("has_tools", bool, description="Only items that carry their own `tools`."),
]


@extend_schema_view(
    list=extend_schema(summary="List your datasets"),
    retrieve=extend_schema(summary="A dataset with its statistics"),
    destroy=extend_schema(
        summary="Delete a dataset (refused while a run uses it)",
        responses={204: None, 409: OpenApiResponse(DetailSerializer, description="Used by a run")},
    ),
)
class DatasetViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet
):
    serializer_class = DatasetSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        return selectors.datasets_for(user=self.request.user)

    def initial(self, request: Request, *args, **kwargs) -> None:
        # Refuse an oversize upload from its declared length, before the body is parsed or stored.
        if self.action == "create" and _content_length(request) > settings.RFT_MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(
                dataset_services.UploadTooLarge(max_bytes=settings.RFT_MAX_UPLOAD_BYTES).args[0]
            )
        super().initial(request, *args, **kwargs)

    @extend_schema(
        summary="Upload a JSONL file",
        description=(
            "Every line is checked; a file with any bad line imports nothing and answers 400 with the "
            "line-numbered errors (the record of the invalid upload keeps them: see `errors`). "
            "Optionally carves an eval split (`eval_fraction` or `eval_count`, with `seed`) off a train file."
        ),
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={
            201: DatasetUploadResultSerializer,
            400: OpenApiResponse(
                DatasetUploadResultSerializer, description="Invalid lines: nothing imported"
            ),
            409: OpenApiResponse(
                inline_serializer(
                    "DuplicateUpload",
                    {"detail": serializers.CharField(), "existing_id": serializers.IntegerField()},
                ),
                description="The same file (SHA-256) was already uploaded",
            ),
            413: OpenApiResponse(DetailSerializer, description="Larger than RFT_MAX_UPLOAD_BYTES"),
            503: OpenApiResponse(
                DetailSerializer,
                description="The server's import slots and queue are full (rftweb/upload_lane.py): see Retry-After",
            ),
        },
    )
    def create(self, request: Request) -> Response:
        upload = DatasetUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        values = upload.validated_data
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
            return Response({"detail": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        except dataset_services.DuplicateUpload as exc:
            return Response(
                {"detail": str(exc), "existing_id": exc.existing.pk}, status=status.HTTP_409_CONFLICT
            )
        except dataset_services.DatasetError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        body = DatasetUploadResultSerializer(
            {
                "dataset": result.dataset,
                "eval_dataset": result.eval_dataset,
                "errors": result.dataset.errors[:UPLOAD_ERRORS_SHOWN],
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.ok else status.HTTP_400_BAD_REQUEST)

    def perform_destroy(self, instance: Dataset) -> None:
        dataset_services.delete_dataset(dataset=instance)

    def destroy(self, request: Request, *args, **kwargs) -> Response:
        try:
            return super().destroy(request, *args, **kwargs)
        except dataset_services.DatasetInUse as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)

    @extend_schema(
        summary="Items in order, a keyset page at a time",
        parameters=ITEM_PARAMETERS,
        responses=DatasetItemPageSerializer,
    )
    @action(detail=True, methods=["get"], pagination_class=None)
    def items(self, request: Request, pk=None) -> Response:
        dataset = self.get_object()
        after = _int_param(request, "after")
        limit = _int_param(request, "limit") or 50
        page = dataset_selectors.dataset_item_page(
            dataset=dataset,
            after=after,
            query=request.query_params.get("q", ""),
            with_tools=request.query_params.get("has_tools", "").lower() in ("1", "true", "yes"),
            limit=limit,
        )
        next_url = None
        if page.next_after is not None:
            params = request.query_params.copy()
            params["after"] = str(page.next_after)
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        results = [
            {
                "index": item.index,
                "line_number": item.line_number,
                "message_count": item.message_count,
                "char_count": item.char_count,
                "has_tools": bool(item.tool_names) or "tools" in item.data,
                "data": item.data,
            }
            for item in page.items
        ]
        return Response(
            DatasetItemPageSerializer(
                {"results": results, "next_after": page.next_after, "next": next_url}
            ).data
        )

    @extend_schema(summary="The errors of an invalid upload", responses=DatasetErrorsSerializer)
    @action(detail=True, methods=["get"], pagination_class=None)
    def errors(self, request: Request, pk=None) -> Response:
        dataset = self.get_object()
        report_url = request.build_absolute_uri(f"{request.path.rstrip('/')}/report/")
        return Response(
            DatasetErrorsSerializer(
                {
                    "status": dataset.status,
                    "error_count": dataset.error_count,
                    "errors": dataset.errors,
                    "report_url": report_url,
                }
            ).data
        )

    @extend_schema(
        summary="Every error as a CSV file (line, error)",
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="errors/report",
        url_name="error-report",
        pagination_class=None,
        renderer_classes=[JSONRenderer, CSVRenderer],
    )
    def error_report(self, request: Request, pk=None):
        dataset = self.get_object()
        return error_report_response(dataset)


def error_report_response(dataset: Dataset) -> StreamingHttpResponse:
    """Every line error of the dataset's upload as a downloaded CSV file (the page offers the same)."""
    response = StreamingHttpResponse(
        dataset_selectors.dataset_error_report_csv(dataset=dataset), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="dataset-{dataset.pk}-errors.csv"'
    return response


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise serializers.ValidationError({name: "must be an integer"}) from exc
