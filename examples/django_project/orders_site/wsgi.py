"""WSGI entry point.

Run:  JWT_PUBLIC_KEY="$(cat public.pem)" gunicorn --chdir examples/django_project orders_site.wsgi
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_site.settings")
application = get_wsgi_application()
