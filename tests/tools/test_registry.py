"""MPAI["TOOLS"]: import strings loaded once per configuration, tools filtered per user."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Permission
from django.core.exceptions import ImproperlyConfigured

from mpai.tools import Tool, enabled_tools, get_tool, run_tool_calls, tool
from mpai.tools.registry import configured_tools
from tests.tools import sample_tools

SAMPLES = [
    "tests.tools.sample_tools.echo",  # a decorated function
    "tests.tools.sample_tools.Shout",  # a Tool subclass
    "tests.tools.sample_tools.whisper",  # a Tool instance
]


def test_import_strings_name_functions_subclasses_and_instances(configure) -> None:
    configure(SAMPLES)
    tools = enabled_tools(None)
    assert [t.name for t in tools] == ["echo", "shout", "whisper"]
    assert tools[0] is sample_tools.echo
    assert type(tools[1]) is sample_tools.Shout
    assert tools[2] is sample_tools.whisper
    assert get_tool("shout") is tools[1]
    assert get_tool("missing") is None
    [result] = run_tool_calls(None, [{"id": "1", "name": "shout", "arguments": '{"text": "hi"}'}])
    assert json.loads(result.content) == {"text": "HI"}


def test_no_tools_by_default() -> None:
    assert enabled_tools(None) == []


def test_the_list_is_loaded_once_per_configuration(configure) -> None:
    configure(SAMPLES)
    first = configured_tools()
    assert configured_tools() is first
    shout = get_tool("shout")
    assert get_tool("shout") is shout  # the subclass is instantiated once
    configure(SAMPLES[:1])
    assert list(configured_tools()) == ["echo"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("tests.tools.sample_tools.NOT_A_TOOL", "is dict, not a Tool"),
        ("tests.tools.sample_tools.plain_function", "decorate the function with @mpai.tools.tool"),
        ("tests.tools.sample_tools.nowhere", 'Could not import .* for MPAI\\["TOOLS"\\]'),
    ],
)
def test_an_entry_that_is_no_tool_is_a_configuration_error(configure, entry, message) -> None:
    configure([entry])
    with pytest.raises(ImproperlyConfigured, match=message):
        enabled_tools(None)


def test_two_tools_of_one_name_are_a_configuration_error(configure) -> None:
    configure([SAMPLES[0], SAMPLES[0]])
    with pytest.raises(ImproperlyConfigured, match="names two tools 'echo'"):
        get_tool("echo")


def test_a_tool_with_an_invalid_schema_is_a_configuration_error(configure) -> None:
    @tool(parameters={"type": "objekt"})
    def broken(user: Any) -> None:
        """Has a schema with an unknown type."""

    configure([broken])
    with pytest.raises(ImproperlyConfigured, match="invalid JSON Schema"):
        enabled_tools(None)


# --- permissions ---------------------------------------------------------------------------


def counting_tool(name: str, permission: Any) -> Tool:
    calls: list[Any] = []

    @tool(name=name, description="Records who called it.", permission=permission)
    def record(user: Any) -> str:
        calls.append(user)
        return "ran"

    record.calls = calls  # type: ignore[attr-defined]
    return record


def test_a_permission_string_is_checked_with_has_perm(configure, make_user) -> None:
    allowed, other = make_user(), make_user()
    allowed.user_permissions.add(
        Permission.objects.get(content_type__app_label="auth", codename="view_user")
    )
    allowed = type(allowed).objects.get(pk=allowed.pk)  # a fresh permission cache
    guarded = counting_tool("guarded", "auth.view_user")
    configure([guarded, counting_tool("open", None)])

    assert [t.name for t in enabled_tools(allowed)] == ["guarded", "open"]
    assert [t.name for t in enabled_tools(other)] == ["open"]
    assert [t.name for t in enabled_tools(AnonymousUser())] == ["open"]
    assert [t.name for t in enabled_tools(None)] == ["open"]

    [refused] = run_tool_calls(other, [{"id": "1", "name": "guarded", "arguments": "{}"}])
    assert refused.error_code == "unknown_tool"  # a hidden tool is not revealed
    assert guarded.calls == []  # type: ignore[attr-defined]
    [ran] = run_tool_calls(allowed, [{"id": "2", "name": "guarded", "arguments": "{}"}])
    assert ran.status == "ok"
    assert guarded.calls == [allowed]  # type: ignore[attr-defined]


def test_a_permission_callable_decides_and_a_failing_one_hides_the_tool(
    configure, make_user
) -> None:
    staff, member = make_user(is_staff=True), make_user()

    def broken(user: Any) -> bool:
        raise RuntimeError("the check is down")

    configure(
        [
            counting_tool("staff_only", lambda user: user.is_staff),
            counting_tool("broken_check", broken),
        ]
    )
    assert [t.name for t in enabled_tools(staff)] == ["staff_only"]
    assert enabled_tools(member) == []
    results = run_tool_calls(
        member,
        [
            {"id": "1", "name": "staff_only", "arguments": "{}"},
            {"id": "2", "name": "broken_check", "arguments": "{}"},
        ],
    )
    assert [r.error_code for r in results] == ["unknown_tool", "unknown_tool"]
