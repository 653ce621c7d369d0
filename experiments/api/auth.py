"""POST /api/v1/auth/token/: a new API token for a username and password (brute-force locked by axes)."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from ..services import api_tokens

LOGIN_FAILED = "Unable to log in with the provided username and password."


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, write_only=True)
    name = serializers.CharField(max_length=100, required=False, default="API login")


class NewTokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The token itself: shown here once, never again.")
    name = serializers.CharField()
    prefix = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)


class ObtainTokenView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Create an API token with a username and password",
        request=TokenRequestSerializer,
        responses={
            201: NewTokenSerializer,
            400: OpenApiResponse(description="Wrong username or password (the same answer for both)"),
            429: OpenApiResponse(
                description="Too many failures for this account or address; see Retry-After"
            ),
        },
    )
    def post(self, request):
        serializer = TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        # Django's request, so that django-axes counts the failure and its middleware answers a lockout.
        user = authenticate(request._request, username=values["username"], password=values["password"])
        if user is None:
            return Response({"detail": LOGIN_FAILED}, status=status.HTTP_400_BAD_REQUEST)
        try:
            new = api_tokens.create_token(user=user, name=values["name"])
        except api_tokens.TokenError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        body = {
            "token": new.key,
            "name": new.token.name,
            "prefix": new.token.prefix,
            "expires_at": new.token.expires_at,
        }
        return Response(NewTokenSerializer(body).data, status=status.HTTP_201_CREATED)
