from __future__ import annotations

from django.contrib.auth.middleware import LoginRequiredMiddleware


class LoginRequiredEverywhereMiddleware(LoginRequiredMiddleware):
    """Every page needs a login (Django's LoginRequiredMiddleware); the API answers 401/403 itself.

    The REST API authenticates with sessions or tokens and must answer JSON errors, not redirect
    to the login page, so its own permission classes (IsAuthenticated by default) guard it.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
