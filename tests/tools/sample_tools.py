"""Tools named by import string in the registry tests."""

from __future__ import annotations

from typing import Any

from mpai.tools import Tool, tool


@tool
def echo(user: Any, text: str) -> dict[str, Any]:
    """Return the text unchanged."""
    return {"text": text}


class Shout(Tool):
    """Return the text in capitals."""

    name = "shout"

    def run(self, user: Any, text: str) -> dict[str, Any]:  # type: ignore[override]
        return {"text": text.upper()}


#: A Tool instance built without the decorator.
whisper = Shout(name="whisper", description="Return the text in capitals, quietly named.")

#: Not a tool: refused by the registry.
NOT_A_TOOL = {"name": "nothing"}


def plain_function(user: Any) -> None:
    """A function never decorated with @tool."""
