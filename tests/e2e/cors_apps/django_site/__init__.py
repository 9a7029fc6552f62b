"""Django with django-cors-headers above the JWT middleware, served by uvicorn (ASGI)."""
