"""Running tool calls: validation, errors as results, time and size bounds, concurrency,
cancellation and the database connections of worker threads."""

from __future__ import annotations

import datetime
import json
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

from mpai.tools import ToolError, ToolResult, run_tool_calls, tool, tool_messages


def call(name: str, arguments: Any = "{}", call_id: str | None = None) -> dict[str, Any]:
    return {"id": call_id or f"call_{name}", "name": name, "arguments": arguments}


def error_of(result: ToolResult) -> dict[str, str]:
    assert result.status == "error", result
    error = json.loads(result.content)["error"]
    assert error["code"] == result.error_code
    return error


@tool
def add(user: Any, a: int, b: int = 0) -> dict[str, Any]:
    """Add two integers."""
    return {"sum": a + b}


@tool
def pick(user: Any, mode: str, tags: list[str] | None = None) -> dict[str, Any]:
    """Return the arguments."""
    return {"mode": mode, "tags": tags}


@tool
def no_arguments(user: Any) -> str:
    """Take nothing."""
    return "done"


@tool
def whoami(user: Any) -> str | None:
    """Return the caller's username."""
    return getattr(user, "username", None)


@pytest.fixture
def basic(configure) -> None:
    configure([add, pick, no_arguments, whoami])


# --- results ---------------------------------------------------------------------------


@pytest.mark.usefixtures("basic")
def test_a_valid_call_gives_its_json_result_and_tool_message() -> None:
    [result] = run_tool_calls(None, [call("add", '{"a": 2, "b": 3}', "call_1")])
    assert result == ToolResult("call_1", "add", "ok", '{"sum": 5}', result.duration_ms, None)
    assert result.duration_ms >= 0
    assert tool_messages([result]) == [
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sum": 5}'}
    ]


@pytest.mark.usefixtures("basic")
def test_results_keep_the_calls_order_and_openai_shaped_calls_are_accepted() -> None:
    calls = [
        call("add", '{"a": 1}', "c1"),
        {"id": "c2", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}},
        call("nope", "{}", "c3"),
        call("no_arguments", "", "c4"),
    ]
    results = run_tool_calls(None, calls)
    assert [r.call_id for r in results] == ["c1", "c2", "c3", "c4"]
    assert [r.content for r in results[:2]] == ['{"sum": 1}', '{"sum": 2}']
    assert results[2].error_code == "unknown_tool"
    assert results[3].content == '"done"'


@pytest.mark.usefixtures("basic")
def test_the_runner_passes_the_user_the_model_cannot_override() -> None:
    class Person:
        username = "alice"

    [ok] = run_tool_calls(Person(), [call("whoami")])
    assert ok.content == '"alice"'
    [refused] = run_tool_calls(Person(), [call("whoami", '{"user": "bob"}')])
    assert "'user' was unexpected" in error_of(refused)["message"]


def test_dates_and_decimals_are_encoded_and_unicode_kept(configure) -> None:
    @tool
    def invoice(user: Any) -> dict[str, Any]:
        """An invoice."""
        return {"due": datetime.date(2026, 1, 31), "total": Decimal("9.50"), "note": "café"}

    configure([invoice])
    [result] = run_tool_calls(None, [call("invoice")])
    assert json.loads(result.content) == {"due": "2026-01-31", "total": "9.50", "note": "café"}


# --- errors the model can recover from -----------------------------------------------


@pytest.mark.usefixtures("basic")
def test_an_unknown_tool_is_an_error_result() -> None:
    [result] = run_tool_calls(None, [call("delete_everything")])
    assert error_of(result) == {
        "code": "unknown_tool",
        "message": "No tool named 'delete_everything' is available.",
    }
    assert result.name == "delete_everything"


@pytest.mark.usefixtures("basic")
@pytest.mark.parametrize("arguments", ['{"a": 1', "not json", '{"a": NaN}', "[" * 100 + "]" * 100])
def test_arguments_that_are_not_json_are_an_error_result(arguments: str) -> None:
    [result] = run_tool_calls(None, [call("add", arguments)])
    assert error_of(result)["code"] == "invalid_json"


@pytest.mark.usefixtures("basic")
@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("[1, 2]", "must be a JSON object, not list"),
        ('"a"', "must be a JSON object, not str"),
        ("{}", "'a' is a required property"),
        ('{"a": "2"}', "arguments['a']: '2' is not of type 'integer'"),
        ('{"a": true}', "arguments['a']: True is not of type 'integer'"),
        ('{"a": 1.5}', "arguments['a']: 1.5 is not of type 'integer'"),
        ('{"a": 1, "c": 2}', "Additional properties are not allowed ('c' was unexpected)"),
    ],
)
def test_arguments_not_matching_the_schema_are_an_error_result(
    arguments: str, expected: str
) -> None:
    [result] = run_tool_calls(None, [call("add", arguments)])
    error = error_of(result)
    assert error["code"] == "invalid_arguments"
    assert expected in error["message"]


@pytest.mark.usefixtures("basic")
def test_nested_schema_errors_name_their_path_and_null_is_allowed_for_optionals() -> None:
    [bad] = run_tool_calls(None, [call("pick", '{"mode": "x", "tags": ["a", 2]}')])
    assert "arguments['tags'][1]: 2 is not of type 'string'" in error_of(bad)["message"]
    [ok] = run_tool_calls(None, [call("pick", '{"mode": "x", "tags": null}')])
    assert json.loads(ok.content) == {"mode": "x", "tags": None}


def test_an_exception_in_the_tool_is_an_error_result_without_its_message(configure) -> None:
    @tool
    def broken(user: Any) -> None:
        """Fails."""
        raise RuntimeError("password=hunter2")

    @tool
    def polite(user: Any) -> None:
        """Fails politely."""
        raise ToolError("not_found", "No order A1 exists.")

    configure([broken, polite])
    broke, refused = run_tool_calls(None, [call("broken"), call("polite")])
    assert error_of(broke)["code"] == "tool_error"
    assert "RuntimeError" in broke.content
    assert "hunter2" not in broke.content
    assert error_of(refused) == {"code": "not_found", "message": "No order A1 exists."}


def test_a_result_that_is_not_json_is_an_error_result(configure) -> None:
    @tool
    def opaque(user: Any) -> Any:
        """Returns an object."""
        return {"value": object()}

    @tool
    def not_a_number(user: Any) -> float:
        """Returns NaN."""
        return float("nan")

    configure([opaque, not_a_number])
    results = run_tool_calls(None, [call("opaque"), call("not_a_number")])
    assert [error_of(r)["code"] for r in results] == ["result_not_serializable"] * 2


def test_a_result_over_the_size_limit_is_an_error_result(configure) -> None:
    @tool
    def text(user: Any, size: int, char: str = "x") -> str:
        """Returns size characters."""
        return char * size

    configure([text], TOOL_RESULT_MAX_BYTES=100)
    fits, over, wide = run_tool_calls(
        None,
        [
            call("text", '{"size": 98}'),  # 98 characters + 2 quotes = 100 bytes
            call("text", '{"size": 99}'),
            call("text", '{"size": 40, "char": "é"}'),  # 80 bytes of UTF-8 + quotes
        ],
    )
    assert fits.status == "ok"
    assert len(fits.content) == 100
    error = error_of(over)
    assert error["code"] == "result_too_large"
    assert "101 bytes, more than the 100 allowed" in error["message"]
    assert wide.status == "ok"


def test_the_default_result_limit_is_16_kib(configure) -> None:
    @tool
    def big(user: Any) -> str:
        """Returns 16 KiB of text."""
        return "x" * 16 * 1024

    configure([big])
    [result] = run_tool_calls(None, [call("big")])
    assert result.error_code == "result_too_large"


# --- time -------------------------------------------------------------------------------


def blocking_tool(release: threading.Event, name: str = "wait", **options: Any) -> Any:
    started = threading.Event()

    @tool(name=name, description="Waits until released.", **options)
    def wait(user: Any) -> str:
        started.set()
        release.wait()
        return "released"

    wait.started = started  # type: ignore[attr-defined]
    return wait


def test_a_call_past_the_timeout_is_an_error_result(configure, release) -> None:
    configure([blocking_tool(release, timeout=0.05), add])  # add has 30 s: never late
    timed_out, quick = run_tool_calls(None, [call("wait"), call("add", '{"a": 1}')], timeout_s=30)
    error = error_of(timed_out)
    assert error == {"code": "timeout", "message": "The tool did not answer within 0.05 s."}
    assert timed_out.duration_ms >= 50
    assert quick.status == "ok"


def test_the_default_timeout_is_the_setting_and_a_tools_own_timeout_wins(
    configure, release
) -> None:
    configure(
        [blocking_tool(release), blocking_tool(release, "own", timeout=0.05)],
        TOOL_TIMEOUT_SECONDS=0.05,
    )
    [by_setting] = run_tool_calls(None, [call("wait")])
    [by_tool] = run_tool_calls(None, [call("own")], timeout_s=60)
    assert by_setting.error_code == by_tool.error_code == "timeout"


def test_a_timed_out_call_frees_its_slot(configure, release) -> None:
    configure([blocking_tool(release, timeout=0.05), add])
    results = run_tool_calls(
        None,
        [call("wait", call_id="w1"), call("wait", call_id="w2"), call("add", '{"a": 1}')],
        max_concurrency=2,
        timeout_s=30,
    )
    assert [r.error_code for r in results] == ["timeout", "timeout", None]


# --- concurrency -------------------------------------------------------------------------


def test_calls_run_in_parallel_up_to_max_concurrency(configure) -> None:
    barrier = threading.Barrier(20, timeout=10)

    @tool
    def meet(user: Any) -> int:
        """Waits until all 20 calls run at once."""
        return barrier.wait()

    configure([meet])
    calls = [call("meet", call_id=f"c{i}") for i in range(20)]
    results = run_tool_calls(None, calls, max_concurrency=20, timeout_s=30)
    assert [r.status for r in results] == ["ok"] * 20
    assert sorted(int(r.content) for r in results) == list(range(20))


def test_at_most_max_concurrency_calls_run_at_once(configure) -> None:
    lock = threading.Lock()
    running, most = 0, 0
    pair = threading.Barrier(2, timeout=10)

    @tool
    def counted(user: Any) -> str:
        """Counts the calls running with it; two meet at a time."""
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            pair.wait()  # two at once happen; a third would raise the count to 3
            return "ok"
        finally:
            with lock:
                running -= 1

    configure([counted])
    results = run_tool_calls(
        None, [call("counted", call_id=f"c{i}") for i in range(8)], max_concurrency=2
    )
    assert [r.status for r in results] == ["ok"] * 8
    assert most == 2


def test_the_default_concurrency_is_the_setting(configure) -> None:
    barrier = threading.Barrier(3, timeout=10)

    @tool
    def meet(user: Any) -> int:
        """Three must meet."""
        return barrier.wait()

    configure([meet], TOOL_MAX_CONCURRENCY=3)
    results = run_tool_calls(None, [call("meet", call_id=f"c{i}") for i in range(3)])
    assert [r.status for r in results] == ["ok"] * 3


def test_max_concurrency_below_one_is_refused(configure) -> None:
    configure([])
    with pytest.raises(ValueError, match="at least 1"):
        run_tool_calls(None, [], max_concurrency=0)


# --- cancellation ------------------------------------------------------------------------


def test_cancelling_marks_unfinished_calls_and_keeps_finished_ones(configure, release) -> None:
    blocker = blocking_tool(release)
    ran: list[str] = []

    @tool
    def later(user: Any) -> str:
        """Must never start."""
        ran.append("later")
        return "ran"

    configure([add, blocker, later])
    cancel = threading.Event()

    def cancel_when_blocked() -> None:
        blocker.started.wait(10)
        cancel.set()

    canceller = threading.Thread(target=cancel_when_blocked)
    canceller.start()
    begun = time.monotonic()
    results = run_tool_calls(
        None,
        [call("add", '{"a": 1}'), call("wait"), call("later")],
        max_concurrency=1,
        timeout_s=60,
        cancel_event=cancel,
    )
    canceller.join()
    assert time.monotonic() - begun < 30  # it stopped waiting: the timeout is 60 s
    assert [r.status for r in results] == ["ok", "cancelled", "cancelled"]
    assert [r.error_code for r in results] == [None, "cancelled", "cancelled"]
    assert json.loads(results[1].content)["error"]["code"] == "cancelled"
    assert results[2].duration_ms == 0.0
    assert ran == []


def test_a_cancel_event_already_set_runs_nothing(configure) -> None:
    ran: list[str] = []

    @tool
    def record(user: Any) -> None:
        """Records that it ran."""
        ran.append("ran")

    configure([record])
    cancel = threading.Event()
    cancel.set()
    [result] = run_tool_calls(None, [call("record")], cancel_event=cancel)
    assert result.status == "cancelled"
    assert ran == []


# --- database connections ----------------------------------------------------------------


@pytest.mark.django_db
def test_a_worker_threads_database_connection_is_closed_after_the_call(configure) -> None:
    from django.db import connections

    seen: list[Any] = []

    @tool
    def query(user: Any) -> int:
        """Runs one query."""
        wrapper = connections["default"]  # this thread's own connection
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            (value,) = cursor.fetchone()
        seen.append((wrapper, wrapper.connection is not None))
        return value

    configure([query])
    [result] = run_tool_calls(None, [call("query")])
    assert result.content == "1"
    [(wrapper, was_open)] = seen
    assert wrapper is not connections["default"]  # the worker's, not the test's
    assert was_open
    assert wrapper.connection is None  # closed when the call ended


# --- odd input ---------------------------------------------------------------------------


@pytest.mark.usefixtures("basic")
def test_parsed_arguments_and_malformed_calls_are_handled() -> None:
    parsed, nameless, not_a_call, missing = run_tool_calls(
        None,
        [
            {"id": "1", "name": "add", "arguments": {"a": 4}},
            {"id": "2", "arguments": "{}"},
            ["add", "{}"],  # type: ignore[list-item]
            {"id": "4", "name": "no_arguments"},  # no arguments at all: {}
        ],
    )
    assert parsed.content == '{"sum": 4}'
    assert nameless.error_code == not_a_call.error_code == "unknown_tool"
    assert missing.content == '"done"'
