"""A web process does its one-time work before it takes requests, not during its first ones.

Django defers much of its set-up to the first request: importing the URL configuration (and with it
every view, serializer and service module: ~0.4 CPU-s here), compiling each template the first time
it is rendered, opening the first database connection, importing the cache's Redis client (~0.13
CPU-s). One request pays that once. But a server is restarted under people: when fifty of them opened
the live run's page at once on a fresh server process (bench/bench_load.py), all its threads waited
on that work together, and the first page came after a second, the last after 1.3 s, while the
process that had answered one request before needed 0.26-0.7 s for the same burst.

`warm_up()` runs at the server's start (the ASGI lifespan, before uvicorn listens), so a process
answers its first request as fast as its hundredth.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

TEMPLATE_SUFFIXES = (".html", ".txt")


def warm_up() -> dict[str, float | int]:
    """Import the URL configuration and its views, compile the project's templates, open a database
    connection, load what is loaded on first use. Returns what was done and how long it took (ms)."""
    started = time.perf_counter()
    report: dict[str, float | int] = {}

    from django.urls import get_resolver

    resolver = get_resolver()
    resolver.reverse_dict  # noqa: B018 - imports the URL configuration, every view, and indexes them
    report["urls_ms"] = _since(started)

    lap = time.perf_counter()
    report["templates"] = _compile_templates()
    report["templates_ms"] = _since(lap)

    lap = time.perf_counter()
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception:  # the database is down: requests will say so; the server still starts
        logger.warning("warm-up: the database does not answer", exc_info=True)
    finally:
        connection.close()  # back to the pool (or closed): this thread serves no request
    report["database_ms"] = _since(lap)

    lap = time.perf_counter()
    _load_lazy_parts()
    report["lazy_parts_ms"] = _since(lap)

    report["total_ms"] = _since(started)
    logger.info("warmed up in %.0f ms (%d templates compiled)", report["total_ms"], report["templates"])
    return report


def _load_lazy_parts() -> None:
    """What Django, DRF and Channels import or open on first use: the cache (the Redis client library,
    ~0.13 CPU-s to import, and its connection), the session engine and message storage, the
    authentication backends, the templates' context processors, DRF's configured classes, the channel
    layer, the translation catalogue and the locale's formats."""
    from importlib import import_module

    from channels.layers import get_channel_layer
    from django.contrib.auth import get_backends
    from django.core.cache import cache
    from django.utils import formats, translation
    from django.utils.module_loading import import_string
    from rest_framework.settings import api_settings

    try:
        cache.get("rftweb:warm-up")
    except Exception:  # Redis is down: requests will say so; the server still starts
        logger.warning("warm-up: the cache does not answer", exc_info=True)
    import_module(settings.SESSION_ENGINE)
    import_string(settings.MESSAGE_STORAGE)
    get_backends()
    for engine in _django_template_engines():
        engine.template_context_processors  # noqa: B018 - imports them
    for name in api_settings.import_strings:
        getattr(api_settings, name)
    get_channel_layer()
    with translation.override(settings.LANGUAGE_CODE):
        translation.gettext("Log in")
        formats.get_format("DATETIME_FORMAT")


def _compile_templates() -> int:
    """Compile every template in the template engines' own folders (the project's templates/: the
    DIRS setting; packages' templates are left to their first use) through the engines, whose cached
    loader keeps them: the first page render then only renders."""
    from django.template import TemplateSyntaxError

    compiled = 0
    for engine in _django_template_engines():
        for folder in map(Path, engine.dirs):
            for path in sorted(folder.rglob("*")):
                if path.suffix not in TEMPLATE_SUFFIXES or not path.is_file():
                    continue
                name = path.relative_to(folder).as_posix()
                try:
                    engine.get_template(name)
                except TemplateSyntaxError:
                    # That page's own error, reported when it is asked for; the server still starts.
                    logger.warning("warm-up: template %s does not compile", name, exc_info=True)
                    continue
                compiled += 1
    return compiled


def _django_template_engines():
    """The configured Django template engines (their `Engine`, with its cached loader)."""
    from django.template import engines
    from django.template.backends.django import DjangoTemplates

    return [backend.engine for backend in engines.all() if isinstance(backend, DjangoTemplates)]


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
