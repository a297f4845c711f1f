"""Slow-operation logging at three levels (README, "Settings": ``SLOW_LOG_*``).

A receiver of ``request_complete``: each stage of ``timings_ms`` is logged on the
``mpai.slow`` logger at DEBUG under ``SLOW_LOG_INFO_S`` (1 s), at INFO from 1 to
``SLOW_LOG_WARNING_S`` (5 s), and at WARNING above, naming the stage.
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
