from __future__ import annotations

from django.shortcuts import render
from django.urls import path

from .. import selectors


def dataset_list(request):
    return render(
        request, "experiments/dataset_list.html", {"datasets": selectors.datasets_for(user=request.user)}
    )


urlpatterns = [
    path("", dataset_list, name="dataset-list"),
]
