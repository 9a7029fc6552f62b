"""ASGI entry point.

Run:  JWT_PUBLIC_KEY="$(cat public.pem)" \
      uvicorn --app-dir examples/django_project orders_site.asgi:application
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_site.settings")
application = get_asgi_application()
