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


class RateLimitedMiddleware:
    """A per-user rate limit hit in a service (RateLimited) becomes 429 with Retry-After on the pages:
    the message in the panel that asked (htmx swaps 429, see base.html), or on a page of its own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from django.shortcuts import render

        from .services.rate_limits import RateLimited

        if not isinstance(exception, RateLimited):
            return None
        template = (
            "experiments/_rate_limited.html" if request.headers.get("HX-Request") else "rate_limited.html"
        )
        response = render(request, template, {"message": str(exception)}, status=429)
        response["Retry-After"] = str(exception.retry_after)
        return response
