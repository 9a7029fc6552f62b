"""Views: the middleware has already verified the token when they run."""

import os

from django.http import HttpRequest, JsonResponse

from jwt_audit_middleware import get_claims


def _seen(request: HttpRequest) -> dict[str, object]:
    claims = request.jwt_claims  # type: ignore[attr-defined]
    return {
        "sub": None if claims is None else claims["sub"],
        "remote_user": request.META.get("REMOTE_USER"),
        "same_as_get_claims": get_claims(request) == claims,
        "pid": os.getpid(),
    }


def orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({**_seen(request), "view": "sync"})


async def orders_async(request: HttpRequest) -> JsonResponse:
    return JsonResponse({**_seen(request), "view": "async"})


def admin_report(request: HttpRequest) -> JsonResponse:
    return JsonResponse({**_seen(request), "report": "ok"})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "claims": request.jwt_claims})  # type: ignore[attr-defined]
