"""URLs of the example project."""

from django.urls import path

from . import views

urlpatterns = [
    path("orders/", views.orders),
    path("async/orders/", views.orders_async),
    path("admin-api/report/", views.admin_report),
    path("health/", views.health),
]
