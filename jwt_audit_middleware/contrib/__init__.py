"""Framework integrations: thin leaves over the ASGI/WSGI middleware and the core.

``contrib.django``, ``contrib.flask`` and ``contrib.fastapi`` each import their
framework; nothing in the package imports them.
"""
