from django.urls import path

from .views import pages

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("datasets/", pages.dataset_list, name="dataset-list"),
    path("tools/", pages.tool_list, name="tool-list"),
    path("graders/", pages.grader_list, name="grader-list"),
    path("runs/", pages.run_list, name="run-list"),
    path("runs/<int:run_id>/", pages.run_detail, name="run-detail"),
    path("compare/", pages.compare, name="compare"),
]
