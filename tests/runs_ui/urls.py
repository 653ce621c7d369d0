"""The project's URLs with the run page, rollout browser and metrics/trajectory API mounted the way
the lead wires them (`runs/` and `/api/v1/`); earlier entries win, so these shadow the old run page."""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from experiments.api import metrics as metrics_api
from experiments.api.trajectories import TrajectoryViewSet
from rftweb.urls import urlpatterns as project_urlpatterns

router = SimpleRouter()
router.register("trajectories", TrajectoryViewSet, basename="trajectory")

urlpatterns = [
    path("api/v1/", include(metrics_api.urlpatterns)),
    path("api/v1/", include(router.urls)),
    path("runs/", include("experiments.views.runs")),
    path("runs/", include("experiments.views.run_actions")),
    *project_urlpatterns,
]
