"""The Environments page: per-rollout environments and MCP tool servers (register, refresh, Try it)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from ..forms.environments import EnvironmentForm, McpServerForm, TryForm
from ..models import Tool
from ..selectors.environments import environments_for, mcp_servers_for
from ..services import environments as environment_services


def _page(request, *, environment_form=None, mcp_form=None, result=None, status=200):
    context = {
        "environments": environments_for(user=request.user),
        "servers": mcp_servers_for(user=request.user),
        "tools": Tool.objects.visible_to(request.user),
        "environment_form": environment_form or EnvironmentForm(owner=request.user, prefix="env"),
        "mcp_form": mcp_form or McpServerForm(owner=request.user, prefix="mcp"),
        "result": result,
    }
    return render(request, "experiments/environment_list.html", context, status=status)


def environment_list(request):
    return _page(request)


@require_POST
def environment_create(request):
    form = EnvironmentForm(request.POST, owner=request.user, prefix="env")
    if not form.is_valid():
        return _page(request, environment_form=form, status=400)
    environment = form.save()
    messages.success(request, f"Environment “{environment.name}” registered.")
    return redirect("environment-list")


@require_POST
def mcp_server_create(request):
    form = McpServerForm(request.POST, owner=request.user, prefix="mcp")
    if not form.is_valid():
        return _page(request, mcp_form=form, status=400)
    server = environment_services.refresh_mcp_tools(form.save())
    if server.last_error:
        messages.error(
            request, f"“{server.name}” registered, but its tools could not be listed: {server.last_error}"
        )
    else:
        messages.success(request, f"“{server.name}” registered: {len(server.tools)} tools listed.")
    return redirect("environment-list")


@require_POST
def mcp_server_refresh(request, server_id: int):
    server = get_object_or_404(mcp_servers_for(user=request.user), pk=server_id)
    server = environment_services.refresh_mcp_tools(server)
    if server.last_error:
        messages.error(request, f"Refresh of “{server.name}” failed: {server.last_error}")
    else:
        messages.success(request, f"“{server.name}”: {len(server.tools)} tools listed.")
    return redirect("environment-list")


@require_POST
def mcp_server_try(request, server_id: int):
    server = get_object_or_404(mcp_servers_for(user=request.user), pk=server_id)
    form = TryForm(request.POST)
    if not form.is_valid() or not form.cleaned_data["tool"]:
        messages.error(request, "Pick a tool and give its arguments as a JSON object.")
        return redirect("environment-list")
    outcome = environment_services.try_mcp_tool(
        server=server, name=form.cleaned_data["tool"], arguments=form.cleaned_data["arguments"]
    )
    return _page(
        request, result={"kind": "mcp", "name": server.name, "tool": form.cleaned_data["tool"], **outcome}
    )


@require_POST
def environment_try(request, environment_id: int):
    environment = get_object_or_404(environments_for(user=request.user), pk=environment_id)
    form = TryForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Arguments are a JSON object.")
        return redirect("environment-list")
    tool = None
    if form.cleaned_data["tool"]:
        tool = get_object_or_404(Tool.objects.visible_to(request.user), pk=form.cleaned_data["tool"])
    outcome = environment_services.try_environment(
        environment=environment, tool=tool, arguments=form.cleaned_data["arguments"]
    )
    return _page(request, result={"kind": "environment", "name": environment.name, **outcome})


urlpatterns = [
    path("", environment_list, name="environment-list"),
    path("new/", environment_create, name="environment-create"),
    path("<int:environment_id>/try/", environment_try, name="environment-try"),
    path("mcp/new/", mcp_server_create, name="mcp-server-create"),
    path("mcp/<int:server_id>/refresh/", mcp_server_refresh, name="mcp-server-refresh"),
    path("mcp/<int:server_id>/try/", mcp_server_try, name="mcp-server-try"),
]
