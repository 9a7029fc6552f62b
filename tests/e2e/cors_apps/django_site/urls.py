"""``/orders/``: needs a token; answers whose orders they are."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from jwt_audit_middleware import get_claims


def orders(request: HttpRequest) -> JsonResponse:
    claims = get_claims(request) or {}
    return JsonResponse({"owner": claims.get("sub"), "orders": [1, 2]})


urlpatterns = [path("orders/", orders)]
