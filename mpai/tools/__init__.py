"""Tools the model may call (OpenAI Chat Completions function calling).

- :mod:`mpai.tools.base`: declare a tool once (:func:`tool`, :class:`Tool`).
- :mod:`mpai.tools.registry`: the site's tools (``MPAI["TOOLS"]``) a user may use.
- :mod:`mpai.tools.execution`: run the model's tool calls, validated and bounded.
- :mod:`mpai.tools.membership`: built-in membership tools over a site adapter.
- :mod:`mpai.tools.metrics`: per-tool calls, errors, p50/p95 of the last hour (cache).

Usage::

    from mpai.tools import enabled_tools, run_tool_calls, tool_messages

    offered = [t.openai_schema() for t in enabled_tools(user)]  # request "tools"
    results = run_tool_calls(user, calls)  # calls from the reply's "tool_calls"
    messages += tool_messages(results)
"""

from mpai.tools.base import FunctionTool, Tool, ToolError, tool
from mpai.tools.execution import ToolResult, run_tool_calls, tool_messages
from mpai.tools.registry import enabled_tools, get_tool

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolError",
    "ToolResult",
    "enabled_tools",
    "get_tool",
    "run_tool_calls",
    "tool",
    "tool_messages",
]
