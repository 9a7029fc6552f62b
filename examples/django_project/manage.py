#!/usr/bin/env python
"""Django's command-line utility for the example project.

Run:  JWT_PUBLIC_KEY="$(cat public.pem)" python examples/django_project/manage.py runserver
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
