from django.urls import include, path

from .views import pages

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("demo/start/", pages.start_demo_run, name="demo-start"),
    path("demo/quick/", pages.start_quick_demo_run, name="demo-quick-start"),
    path("datasets/", include("experiments.views.datasets")),
    path("tools/", include("experiments.views.tools")),
    path("environments/", include("experiments.views.environments")),
    path("graders/", include("experiments.views.graders")),
    path("runs/", pages.run_list, name="run-list"),
    path("runs/", include("experiments.views.run_actions")),
    path("runs/", include("experiments.views.runs")),
    path("compare/", include("experiments.views.compare")),
    path("playground/", include("experiments.views.playground")),
    path("account/", include("experiments.views.accounts")),
    path("", include("experiments.views.readiness")),
]
