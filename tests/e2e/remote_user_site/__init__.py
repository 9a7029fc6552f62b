"""A Django site behind jwt_audit_middleware and Django's own ``RemoteUserMiddleware``.

Served by ``tests/e2e/test_remote_user.py`` under uvicorn and gunicorn.
"""
