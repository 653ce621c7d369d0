"""The user's own account pages: API tokens (list, create once-shown, revoke) and the login lockout."""

from __future__ import annotations

import math
import secrets

from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from ..selectors.api_tokens import tokens_for
from ..services import api_tokens


def lockout_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    wait = f"{minutes} minute{'s' if minutes != 1 else ''}"
    return (
        "Too many failed sign-in attempts for this account or from this address. "
        f"Try again in {wait}; every attempt until then restarts the wait."
    )


def lockout_response(request, original_response=None, credentials=None):
    """django-axes' AXES_LOCKOUT_CALLABLE: 429 with Retry-After, JSON for the API, the login page else."""
    cool_off = get_cool_off(request)
    seconds = max(1, math.ceil(cool_off.total_seconds())) if cool_off else 3600
    message = lockout_message(seconds)
    if request.path.startswith("/api/"):
        response = JsonResponse({"detail": message}, status=429)
    else:
        form = AuthenticationForm(request)
        response = render(
            request, "registration/login.html", {"form": form, "lockout_message": message}, status=429
        )
    response["Retry-After"] = str(seconds)
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def token_list(request):
    new_token = None
    error = None
    if request.method == "POST":
        # A reload of this page re-sends the form: its one-time nonce makes that a no-op, not a
        # second token (the first one's key was shown once and is not kept anywhere to show again).
        nonce = request.POST.get("nonce", "")
        if not nonce or not cache.add(f"token-form:{request.user.pk}:{nonce}", 1, timeout=24 * 3600):
            error = "This form was already sent: its token was created and shown then. Create a new one if you need it."
        else:
            try:
                new_token = api_tokens.create_token(user=request.user, name=request.POST.get("name", ""))
            except api_tokens.TokenError as exc:
                error = str(exc)
    # The new key is in this response only (never_cache: no copy in a browser or proxy cache); it is
    # not put in a message or the session, so reloading or coming back does not show it again.
    context = {
        "tokens": tokens_for(user=request.user),
        "new_token": new_token,
        "error": error,
        "now": timezone.now(),
        "token_days": settings.RFT_API_TOKEN_DAYS,
        "nonce": secrets.token_urlsafe(16),
    }
    return render(request, "accounts/tokens.html", context, status=400 if error else 200)


@require_POST
def token_revoke(request, token_id: int):
    try:
        token = api_tokens.revoke_token(user=request.user, token_id=token_id)
    except api_tokens.TokenError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Revoked “{token.name}” ({token.prefix}…): it no longer works.")
    return redirect("token-list")


urlpatterns = [
    path("tokens/", token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", token_revoke, name="token-revoke"),
]
