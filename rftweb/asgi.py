"""ASGI entry point: HTTP through Django, WebSockets through Channels (session-authenticated).

Served by uvicorn (`manage.py serve`), which streams request bodies to the app; RequestBodyGuard
judges each request's headers before any of its body is read (see rftweb/request_guard.py).

HTTP requests run Django's WSGI handler on a fixed pool of RFT_WEB_THREADS threads (a2wsgi), the
request body still streamed from the server as the handler reads it. Django's ASGI handler would start
a thread for every request (asgiref's per-request ThreadSensitiveContext) and hop between the event
loop and threads around each sync middleware and the view: under 200 people at once that machinery
cost more than a fifth of the server's CPU (bench/bench_load.py, bench/README.md). A body without a
length (chunked) goes to Django's ASGI handler, which reads it whole (spooled to disk): WSGI has no
way to read a body of unknown length. Uploads run in a lane of their own, served by a helper process
(rftweb/upload_lane.py).

Each server process sets itself up before it listens (rftweb/lifespan.py, rftweb/warmup.py): its first
requests are served as fast as the later ones.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rftweb.settings.local")
django_asgi_app = get_asgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from experiments.routing import websocket_urlpatterns  # noqa: E402
from rftweb.lifespan import Lifespan  # noqa: E402
from rftweb.request_guard import RequestBodyGuard, refuse  # noqa: E402
from rftweb.upload_lane import UploadLane  # noqa: E402
from rftweb.warmup import warm_up  # noqa: E402

django_wsgi = get_wsgi_application()
django_wsgi_app = WSGIMiddleware(django_wsgi, workers=settings.RFT_WEB_THREADS)
upload_lane = UploadLane(
    django_wsgi,
    workers=settings.RFT_UPLOAD_CONCURRENCY,
    queue=settings.RFT_UPLOAD_QUEUE,
    nice=settings.RFT_UPLOAD_NICE,
    refuse=refuse,
    processes=settings.RFT_IMPORT_PROCESSES,
    helper_min_bytes=settings.RFT_IMPORT_HELPER_MIN_BYTES,
    spool_dir=settings.FILE_UPLOAD_TEMP_DIR,
)

application = ProtocolTypeRouter(
    {
        "http": RequestBodyGuard(django_wsgi_app, chunked_app=django_asgi_app, upload_app=upload_lane),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        # Before each server process listens: its one-time set-up (rftweb/warmup.py), its upload helper.
        "lifespan": Lifespan(startup=[warm_up, upload_lane.start]),
    }
)
