"""Tool pages: list, create (also by importing an OpenAI function definition), edit, delete, "Try it".

Thin: forms parse, services decide, selectors read. With htmx the same view answers the form partial
(errors in place); without it, the full page.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from ..forms.tools import ToolForm, ToolImportForm, ToolTryForm, pretty_json, sample_arguments
from ..selectors import tools as tool_selectors
from ..services import tools as tool_services


def _redirect(request, url: str) -> HttpResponse:
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def tool_list(request, *, list_text: str = "", list_errors: list[str] | None = None, status: int = 200):
    return render(
        request,
        "experiments/tool_list.html",
        {
            "tools": tool_selectors.tools_for(user=request.user),
            "list_text": list_text,
            "list_errors": list_errors or [],
        },
        status=status,
    )


@require_POST
def tool_import_list(request):
    """Register every tool of a pasted agent-RFT job tool list ([{"name", "server_url", "headers"}])."""
    text = request.POST.get("tools", "")
    try:
        tools = tool_services.import_tool_list(owner=request.user, definitions=text)
    except ValidationError as error:
        problems = error.message_dict.get("tools", error.messages)
        return tool_list(request, list_text=text, list_errors=problems, status=422)
    messages.success(
        request,
        f"Imported {len(tools)} tool{'s' if len(tools) != 1 else ''}: {', '.join(t.name for t in tools)}.",
    )
    return _redirect(request, reverse("tool-list"))


def _render_form(request, *, form: ToolForm, tool=None, import_form=None, saved: bool = False, status=200):
    context = {"form": form, "tool": tool, "import_form": import_form or ToolImportForm(), "saved": saved}
    if request.htmx and not request.htmx.boosted:
        return render(request, "experiments/_tool_form.html", context, status=status)
    if tool is not None:
        context["try_form"] = ToolTryForm(
            initial={"arguments": pretty_json(sample_arguments(tool.parameters)), "item": ""}
        )
        context["runs"] = tool_selectors.runs_using_tool(tool=tool)
    template = "experiments/tool_edit.html" if tool is not None else "experiments/tool_create.html"
    return render(request, template, context, status=status)


def tool_create(request):
    if request.method != "POST":
        return _render_form(request, form=ToolForm())
    form = ToolForm(request.POST)
    if form.is_valid():
        try:
            tool = tool_services.create_tool(owner=request.user, **form.service_arguments())
        except ValidationError as error:
            form.add_service_errors(error)
        else:
            messages.success(request, f"Tool {tool.name} created. Try it below.")
            return _redirect(request, reverse("tool-edit", args=[tool.pk]))
    return _render_form(request, form=form, status=422 if not request.htmx else 200)


def tool_edit(request, tool_id: int):
    tool = tool_selectors.tool_for(user=request.user, tool_id=tool_id)
    if request.method != "POST":
        return _render_form(request, form=ToolForm(instance=tool), tool=tool)
    form = ToolForm(request.POST, instance=tool)
    if form.is_valid():
        try:
            tool = tool_services.update_tool(
                tool=tool,
                clear_signing_secret=form.cleaned_data["clear_signing_secret"],
                **form.service_arguments(),
            )
        except ValidationError as error:
            form.add_service_errors(error)
            tool.refresh_from_db()
        else:
            if not request.htmx:
                messages.success(request, f"Tool {tool.name} saved.")
                return redirect("tool-edit", tool_id=tool.pk)
            return _render_form(request, form=ToolForm(instance=tool), tool=tool, saved=True)
    return _render_form(request, form=form, tool=tool, status=422 if not request.htmx else 200)


@require_POST
def tool_import(request):
    """Fill the create form from a pasted OpenAI function definition."""
    import_form = ToolImportForm(request.POST)
    if import_form.is_valid():
        try:
            imported = tool_services.parse_function_definition(import_form.cleaned_data["definition"])
        except ValidationError as error:
            import_form.add_error("definition", error.message_dict.get("definition", error.messages))
        else:
            form = ToolForm(initial=imported)
            if request.htmx:
                response = render(
                    request,
                    "experiments/_tool_form.html",
                    {"form": form, "tool": None, "imported": imported["name"]},
                )
                response["HX-Retarget"] = "#tool-form"
                response["HX-Reswap"] = "outerHTML"
                return response
            return render(
                request,
                "experiments/tool_create.html",
                {"form": form, "tool": None, "import_form": ToolImportForm(), "imported": imported["name"]},
            )
    if request.htmx:
        return render(request, "experiments/_tool_import.html", {"import_form": import_form})
    return render(
        request,
        "experiments/tool_create.html",
        {"form": ToolForm(), "tool": None, "import_form": import_form},
    )


@require_POST
def tool_validate_parameters(request):
    """The live check under the parameters editor (JSON syntax, then JSON Schema)."""
    text = request.POST.get("parameters", "")
    try:
        problems = tool_services.schema_problems(json.loads(text))
    except json.JSONDecodeError as exc:
        problems = [f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."]
    return render(
        request, "experiments/_tool_parameters_check.html", {"problems": problems, "checked": bool(text)}
    )


@require_POST
def tool_try(request, tool_id: int):
    tool = tool_selectors.tool_for(user=request.user, tool_id=tool_id)
    try_form = ToolTryForm(request.POST)
    context = {"tool": tool, "try_form": try_form}
    if try_form.is_valid():
        arguments = try_form.cleaned_data["arguments"]
        result = tool_services.try_tool(
            tool=tool, arguments=arguments, item=try_form.cleaned_data["item"], user=request.user
        )
        context["result"] = tool_services.try_result_as_dict(result)
        # Exactly as sent: no key reordering.
        context["request_body"] = json.dumps(result.request.body, indent=2, ensure_ascii=False)
        context["request_headers"] = result.request.headers
        context["argument_warnings"] = tool_services.arguments_problems(tool=tool, arguments=arguments)
    template = "experiments/_tool_try.html"
    if not request.htmx:
        context.update(
            form=ToolForm(instance=tool),
            import_form=ToolImportForm(),
            runs=tool_selectors.runs_using_tool(tool=tool),
        )
        template = "experiments/tool_edit.html"
    return render(request, template, context)


@require_POST
def tool_delete(request, tool_id: int):
    tool = tool_selectors.tool_for(user=request.user, tool_id=tool_id)
    try:
        tool_services.delete_tool(tool=tool)
    except tool_services.ToolInUseError as exc:
        if request.htmx:
            return render(request, "experiments/_tool_delete_refused.html", {"message": str(exc)})
        messages.error(request, str(exc))
        return redirect("tool-edit", tool_id=tool.pk)
    messages.success(request, f"Tool {tool.name} deleted.")
    return _redirect(request, reverse("tool-list"))


urlpatterns = [
    path("", tool_list, name="tool-list"),
    path("new/", tool_create, name="tool-create"),
    path("import/", tool_import, name="tool-import"),
    path("import-list/", tool_import_list, name="tool-import-list"),
    path("validate-parameters/", tool_validate_parameters, name="tool-validate-parameters"),
    path("<int:tool_id>/", tool_edit, name="tool-edit"),
    path("<int:tool_id>/try/", tool_try, name="tool-try"),
    path("<int:tool_id>/delete/", tool_delete, name="tool-delete"),
]
