"""An ASGI lifespan handler: on server shutdown, stop the replies still streaming.

Only ``chat.cancel`` or server shutdown stops a reply; then its partial
text is saved with status ``cancelled``. Wire it into the project's router::

    ProtocolTypeRouter({"http": ..., "websocket": ..., "lifespan": mpai.lifespan.app})
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mpai.chat.turns import active_turns, cancel_all_turns

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]

#: Seconds shutdown waits for cancelled replies to be saved.
SHUTDOWN_GRACE_S = 10.0


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer ``lifespan.startup`` and, on ``lifespan.shutdown``, cancel and save replies."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            cancelled = await asyncio.to_thread(cancel_all_turns)
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
            while active_turns() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # the turns finish in worker threads
            if cancelled:
                logger.info("mpai cancelled %d streaming replies at shutdown", cancelled)
            await send({"type": "lifespan.shutdown.complete"})
            return
