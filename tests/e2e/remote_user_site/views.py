"""The one view: who Django thinks the user is, and what the identity keys of META hold."""

from django.http import HttpRequest, JsonResponse


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    return JsonResponse(
        {
            "username": user.get_username() or None,
            "is_superuser": user.is_superuser,
            "is_authenticated": user.is_authenticated,
            # where RemoteUserMiddleware reads: sync (WSGI, Django < 5.2) and async (ASGI)
            "remote_user": request.META.get("REMOTE_USER"),
            "http_remote_user": request.META.get("HTTP_REMOTE_USER"),
        }
    )
