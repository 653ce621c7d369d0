"""`manage.py serve`: the web server (HTTP + WebSockets), the same in `make up` and in production.

uvicorn streams request bodies to the app as they arrive (it stops reading the socket until the app
asks for more), so rftweb/request_guard.py can refuse a request from its headers and cut an oversize
body without the server ever holding it. Daphne, the previous server, read every body whole into
memory before the app saw the request.
"""

from __future__ import annotations

import os

import uvicorn
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve rftweb (HTTP and WebSockets) with uvicorn."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=os.environ.get("RFTWEB_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("RFTWEB_PORT", "8000")))
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.environ.get("RFTWEB_WEB_WORKERS", "1")),
            help="Server processes (each one serves HTTP and WebSockets; Redis joins them up).",
        )
        parser.add_argument(
            "--forwarded-allow-ips",
            default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            help="Proxies trusted for X-Forwarded-For/-Proto (the client address used by login lockouts).",
        )

    def handle(self, *args, **options) -> None:
        uvicorn.run(
            "rftweb.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            # h11: pure Python but with a bound on header size (h11_max_incomplete_event_size).
            http="h11",
            # The sans-I/O websockets protocol: a fifth less CPU per frame than the legacy one when a
            # run's frames fan out to many watchers (bench/bench_request_cpu.py: 50 watchers, 9.0-9.9
            # -> 7.3 ms per recorded step).
            ws="websockets-sansio",
            # The upload helpers start with each server process (rftweb/upload_lane.py).
            lifespan="on",
            proxy_headers=True,
            forwarded_allow_ips=options["forwarded_allow_ips"],
            server_header=False,
            # Longer than people's pauses between clicks (and than an event loop's lag under load):
            # a keep-alive connection closed just as the client reuses it fails that request.
            timeout_keep_alive=30,
            access_log=False,
            # On SIGTERM, open WebSockets (a run page left open) would otherwise keep a worker waiting
            # forever: its supervisor gives up and the worker stays behind, orphaned, serving nothing.
            timeout_graceful_shutdown=10,
        )
