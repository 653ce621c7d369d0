from django.urls import path
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from . import compare, metrics
from .datasets import DatasetViewSet
from .graders import GraderViewSet
from .playground import PlaygroundViewSet
from .readiness import GraderAuditViewSet, ReadinessReportViewSet
from .runs import RunViewSet
from .tools import ToolViewSet
from .trajectories import TrajectoryViewSet

router = DefaultRouter()
router.register("datasets", DatasetViewSet, basename="api-dataset")
router.register("tools", ToolViewSet, basename="api-tool")
router.register("graders", GraderViewSet, basename="api-grader")
router.register("runs", RunViewSet, basename="api-run")
router.register("trajectories", TrajectoryViewSet, basename="api-trajectory")
router.register("readiness", ReadinessReportViewSet, basename="api-readiness")
router.register("audits", GraderAuditViewSet, basename="api-audit")
router.register("playground", PlaygroundViewSet, basename="api-playground")

urlpatterns = [
    path("auth/token/", obtain_auth_token, name="api-token"),
    *compare.urlpatterns,
    *metrics.urlpatterns,  # before the router: /runs/{id}/metrics/ and /runs/{id}/series/
    *router.urls,
]
