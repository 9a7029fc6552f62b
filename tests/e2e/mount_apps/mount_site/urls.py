"""``/health`` (exempt), ``/admin`` (scope ``admin``), ``/orders`` (any token)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path


def saw(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "script_name": request.META.get("SCRIPT_NAME"),
            "path_info": request.path_info,
            "path": request.path,
        }
    )


urlpatterns = [path("health", saw), path("admin", saw), path("orders", saw)]
