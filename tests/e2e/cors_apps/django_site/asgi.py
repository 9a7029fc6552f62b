"""ASGI entry point: ``uvicorn --app-dir tests/e2e cors_apps.django_site.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cors_apps.django_site.settings")
application = get_asgi_application()
