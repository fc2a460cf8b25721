"""The WSGI entry point: ``service.wsgi:app``."""

from service.app import create_app

app = create_app()
