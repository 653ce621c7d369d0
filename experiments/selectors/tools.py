"""Reads about tools: one of the user's tools, and the runs that use it."""

from __future__ import annotations

from django.shortcuts import get_object_or_404

from ..models import Run, Tool
from . import tools_for


def tool_for(*, user, tool_id: int) -> Tool:
    """The user's tool, or 404 (another user's tool does not exist for this user)."""
    return get_object_or_404(tools_for(user=user), pk=tool_id)


def runs_using_tool(*, tool: Tool, limit: int = 20) -> list[Run]:
    return list(tool.runs.order_by("-created_at")[:limit])
