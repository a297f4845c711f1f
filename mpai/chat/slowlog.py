"""Slow-operation logging at three levels (README, "Settings": ``SLOW_LOG_*``).

Two receivers log on the ``mpai.slow`` logger at DEBUG under ``SLOW_LOG_INFO_S``
(1 s), at INFO from 1 to ``SLOW_LOG_WARNING_S`` (5 s), and at WARNING above:

- :func:`log_stage_timings` (``request_complete``): each stage of ``timings_ms``,
  naming the stage;
- :func:`log_slow_tool_call` (``tool_called``): each tool call, naming the tool.
"""

from __future__ import annotations

import logging
from typing import Any

from mpai.conf import mpai_settings

logger = logging.getLogger("mpai.slow")

#: Stages logged (``total`` last so a slow request reads cause first).
STAGES = ("context", "api_wait", "first_token", "generation", "processing", "total")


def level_for(seconds: float) -> int:
    """Return the log level for an operation that took ``seconds``."""
    if seconds > mpai_settings.SLOW_LOG_WARNING_S:
        return logging.WARNING
    if seconds >= mpai_settings.SLOW_LOG_INFO_S:
        return logging.INFO
    return logging.DEBUG


def log_stage_timings(*, trace: Any, timings_ms: dict[str, float], **kwargs: Any) -> None:
    """Log each stage of a finished chat request at the level its duration earns."""
    for stage in STAGES:
        seconds = timings_ms.get(stage, 0.0) / 1000
        level = level_for(seconds)
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "mpai stage %s took %.3f s (request %s)",
                stage,
                seconds,
                trace.request_id,
                extra={"stage": stage, "duration_s": seconds, "request_id": trace.request_id},
            )


def log_slow_tool_call(
    *,
    name: str,
    duration_ms: float,
    status: str = "",
    call_id: str = "",
    trace: Any = None,
    **kwargs: Any,
) -> None:
    """Log one tool call (``duration_ms`` in ms) at the level its duration earns
    (:func:`level_for`), with the tool's name, its status and the request id."""
    seconds = float(duration_ms) / 1000
    level = level_for(seconds)
    if logger.isEnabledFor(level):
        request_id = getattr(trace, "request_id", None)
        logger.log(
            level,
            "mpai tool %s took %.3f s (%s, request %s)",
            name,
            seconds,
            status or "?",
            request_id,
            extra={
                "tool": name,
                "duration_s": seconds,
                "status": status,
                "call_id": call_id,
                "request_id": request_id,
            },
        )
