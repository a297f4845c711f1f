"""Tools the tool-loop tests configure by import string (``tests.tools.loop_tools.<name>``).

``gate`` holds back :func:`wait_for_gate` until a test (or its teardown) sets it;
``entered`` is set once such a call is running, so a test waits on that, never on time.
"""

from __future__ import annotations

import threading
from typing import Any

from mpai.tools import ToolError, tool

gate = threading.Event()
entered = threading.Event()
#: Two calls of :func:`meet` must run at once to pass it (parallel calls).
barrier = threading.Barrier(2, timeout=10)


def reset() -> None:
    """Fresh events and barrier for a test (the old gate is opened first)."""
    global gate, entered, barrier
    gate.set()
    barrier.abort()
    gate, entered, barrier = threading.Event(), threading.Event(), threading.Barrier(2, timeout=10)


@tool
def echo(user: Any, text: str) -> dict[str, Any]:
    """Return the text unchanged, with the user's name."""
    return {"text": text, "user": getattr(user, "username", None)}


@tool
def refuse(user: Any, what: str = "that") -> dict[str, Any]:
    """Always fails with an error the model can act on."""
    raise ToolError("not_found", f"No record of {what}.")


@tool(timeout=0.2)
def slow(user: Any) -> dict[str, Any]:
    """Waits for the gate; its timeout is 0.2 s."""
    entered.set()
    gate.wait(30)
    return {"late": True}


@tool(timeout=30)
def wait_for_gate(user: Any) -> dict[str, Any]:
    """Waits for the gate (up to 30 s), then answers."""
    entered.set()
    gate.wait(30)
    return {"opened": gate.is_set()}


@tool
def meet(user: Any, who: str) -> dict[str, Any]:
    """Passes only when another call of it runs at the same time."""
    barrier.wait()
    return {"met": who}


@tool
def repeat(user: Any, word: str, times: int) -> dict[str, Any]:
    """Return ``word`` ``times`` times (a large result from small arguments)."""
    return {"text": " ".join([word] * times)}


ALL = [
    f"tests.tools.loop_tools.{name}" for name in ("echo", "refuse", "slow", "wait_for_gate", "meet")
]
