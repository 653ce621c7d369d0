from __future__ import annotations

from django.shortcuts import render
from django.urls import path

from .. import selectors


def tool_list(request):
    return render(request, "experiments/tool_list.html", {"tools": selectors.tools_for(user=request.user)})


urlpatterns = [
    path("", tool_list, name="tool-list"),
]
