"""WSGI entry point: ``gunicorn --chdir tests/e2e remote_user_site.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remote_user_site.settings")
application = get_wsgi_application()
