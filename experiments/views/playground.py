"""The playground pages: choose a run's checkpoint and a prompt, watch adapter and base model answer.

Included at `playground/`. Thin: selectors read, services create/stop; the page streams over
/ws/playground/<id>/ (experiments.consumers.PlaygroundConsumer).
"""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from ..selectors import playground as playground_selectors
from ..services import playground as playground_services


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def playground(request):
    source = request.POST if request.method == "POST" else request.GET
    run_id = _int_or_none(source.get("run"))
    choices = playground_selectors.playground_choices(user=request.user, run_id=run_id)
    raw_step = source.get("step", "")
    step = None if raw_step in ("", "final") else _int_or_none(raw_step)
    error = None
    if request.method == "POST" and choices["run"] is not None:
        try:
            session = playground_services.create_session(
                owner=request.user,
                run=choices["run"],
                step=step,
                item_id=_int_or_none(request.POST.get("item")),
                prompt=request.POST.get("prompt", "") if not request.POST.get("item") else "",
            )
        except playground_services.PlaygroundError as exc:
            error = str(exc)
        else:
            return redirect("playground-session", session_id=session.pk)
    context = {
        **choices,
        "step": step,
        "chosen_item": _int_or_none(source.get("item")),
        "prompt": source.get("prompt", ""),
        "error": error,
        "recent": playground_selectors.sessions_for(user=request.user)[:10],
    }
    return render(request, "experiments/playground.html", context)


def playground_session(request, session_id: int):
    session = get_object_or_404(playground_selectors.sessions_for(user=request.user), pk=session_id)
    page_config = {
        "sessionId": session.pk,
        "socketPath": f"/ws/playground/{session.pk}/",
        "status": session.status,
        "result": session.result,
    }
    checkpoint = f"checkpoint at step {session.step}" if session.step is not None else "final adapter"
    return render(
        request,
        "experiments/playground_session.html",
        {"session": session, "checkpoint": checkpoint, "page_config": page_config},
    )


@require_POST
def playground_stop(request, session_id: int):
    session = get_object_or_404(playground_selectors.sessions_for(user=request.user), pk=session_id)
    playground_services.request_stop(session_id=session.pk)
    messages.info(request, "Stopping the playground session.")
    return redirect("playground-session", session_id=session.pk)


urlpatterns = [
    path("", playground, name="playground"),
    path("<int:session_id>/", playground_session, name="playground-session"),
    path("<int:session_id>/stop/", playground_stop, name="playground-stop"),
]
