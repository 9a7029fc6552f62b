"""``/whoami`` needs a token; ``/optional/whoami`` takes one if given."""

from django.urls import path

from . import views

urlpatterns = [
    path("whoami", views.whoami),
    path("optional/whoami", views.whoami),
]
