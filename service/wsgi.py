"""The WSGI entry point: ``service.wsgi:app``."""

import threading

from service.app import create_app

app = create_app()
# Each served worker reads settings, connections and the system password in the
# background as it starts, so its first requests do not all wait for them.
threading.Thread(target=app.extensions["smtpconf"].warm, name="smtpconf-warm-up", daemon=True).start()
