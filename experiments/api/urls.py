from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from . import compare, downloads, metrics
from .auth import ObtainTokenView
from .datasets import DatasetViewSet
from .environments import EnvironmentViewSet, McpServerViewSet
from .graders import GraderViewSet
from .hosted_graders import HostedGraderRunView, HostedGraderValidateView
from .playground import PlaygroundViewSet
from .readiness import GraderAuditViewSet, ReadinessReportViewSet
from .runs import RunViewSet
from .tools import ToolViewSet
from .trajectories import TrajectoryViewSet

router = DefaultRouter()
router.register("datasets", DatasetViewSet, basename="api-dataset")
router.register("tools", ToolViewSet, basename="api-tool")
router.register("mcp-servers", McpServerViewSet, basename="api-mcp-server")
router.register("environments", EnvironmentViewSet, basename="api-environment")
router.register("graders", GraderViewSet, basename="api-grader")
router.register("runs", RunViewSet, basename="api-run")
router.register("trajectories", TrajectoryViewSet, basename="api-trajectory")
router.register("readiness", ReadinessReportViewSet, basename="api-readiness")
router.register("audits", GraderAuditViewSet, basename="api-audit")
router.register("playground", PlaygroundViewSet, basename="api-playground")

urlpatterns = [
    path("auth/token/", ObtainTokenView.as_view(), name="api-token"),
    # The hosted grader API's paths (before the router, which has graders/{id}/): with or without a
    # trailing slash, also under the hosted prefix fine_tuning/alpha/ so only the base URL changes.
    re_path(r"^(?:fine_tuning/alpha/)?graders/run/?$", HostedGraderRunView.as_view(), name="api-graders-run"),
    re_path(
        r"^(?:fine_tuning/alpha/)?graders/validate/?$",
        HostedGraderValidateView.as_view(),
        name="api-graders-validate",
    ),
    *compare.urlpatterns,
    *downloads.urlpatterns,  # before the router: /runs/{id}/download/..., /merged/, /checkpoints/
    *metrics.urlpatterns,  # before the router: /runs/{id}/metrics/ and /runs/{id}/series/
    *router.urls,
]
