"""ASGI entry point of the demo: HTTP through Django, websockets through Channels.

``mpai.asgi.get_asgi_application`` wires HTTP, the websocket (exact-origin check, the
session user, mpai's routes) and mpai's lifespan handler (server shutdown stops and
saves streaming replies).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from mpai.asgi import get_asgi_application

# The demo serves /static/ itself, also with DEBUG off, so the chat page works either
# way; a production site serves collectstatic's output from its web server or CDN.
application = get_asgi_application(static_files=True)
