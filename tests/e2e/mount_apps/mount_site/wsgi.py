"""WSGI entry point: ``SCRIPT_NAME=/api gunicorn mount_apps.mount_site.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mount_apps.mount_site.settings")
application = get_wsgi_application()
