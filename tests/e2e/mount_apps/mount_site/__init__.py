"""A Django project served by gunicorn under ``SCRIPT_NAME=/api`` (case 5)."""
