from __future__ import annotations

from django.shortcuts import render
from django.urls import path

from .. import selectors


def grader_list(request):
    return render(
        request, "experiments/grader_list.html", {"graders": selectors.graders_for(user=request.user)}
    )


urlpatterns = [
    path("", grader_list, name="grader-list"),
]
