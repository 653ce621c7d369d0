"""The server's start and stop (the ASGI lifespan protocol, which uvicorn speaks: `lifespan="on"`).

Each web process runs the start-up steps before it listens (uvicorn binds its socket only once start-up
has completed), one after the other, on a thread: the steps are ordinary blocking Django code. A step
that raises fails the start: uvicorn prints the error and exits, instead of serving a process that
would answer every request with it.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)


class Lifespan:
    def __init__(self, startup: Sequence[Callable[[], object]]) -> None:
        self.startup = list(startup)

    async def __call__(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for step in self.startup:
                        await asyncio.to_thread(step)
                except Exception:
                    logger.exception("the server's start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
