from django.urls import path
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from .datasets import DatasetViewSet
from .graders import GraderViewSet
from .runs import RunViewSet
from .tools import ToolViewSet

router = DefaultRouter()
router.register("datasets", DatasetViewSet, basename="dataset")
router.register("tools", ToolViewSet, basename="tool")
router.register("graders", GraderViewSet, basename="grader")
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("auth/token/", obtain_auth_token, name="api-token"),
    *router.urls,
]
