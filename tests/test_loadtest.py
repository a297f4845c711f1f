"""``mpai_loadtest`` against the demo ASGI app in a real uvicorn process (test database,
private Redis, the fake provider)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command

from mpai import loadtest
from mpai.models import Message
from tests.asgi_server import AsgiServer, server_env
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PARTS = ["Load ", "tests ", "measure ", "the ", "server."]


# The private Redis (and its response cache) lives for the whole session and the
# load-test users' names repeat, so the tests send "cache": false (--no-cache).


@pytest.fixture(autouse=True)
def _packaged_prompts_by_default(monkeypatch):
    """The tests name their corpus: no $MPAI_LOADTEST_CORPUS nor the shared corpus."""
    monkeypatch.delenv(loadtest.CORPUS_ENV, raising=False)
    monkeypatch.setattr(loadtest, "default_corpus", lambda: None)


def test_all_turns_succeed_and_the_report_has_percentiles(e2e_server, fake_openai):
    fake_openai.stream_reply(PARTS)
    buf = io.StringIO()
    call_command(
        "mpai_loadtest", url=e2e_server.ws_url, users=3, messages=2, no_cache=True, stdout=buf
    )
    out = buf.getvalue()
    assert "turns: 6 ok, 0 failed (of 6)" in out, out
    assert "errors: none" in out
    # The relay merges the deltas a slow loop has not sent yet: 1 to 5 frames a turn.
    replies = re.search(
        rf"^replies: (\d+) deltas, {6 * len(''.join(PARTS))} characters, "
        "0 from the response cache$",
        out,
        re.M,
    )
    assert replies, out
    assert 6 <= int(replies[1]) <= 6 * len(PARTS)
    for row in ("connect", "started", "first token", "total"):
        match = re.search(rf"^{row}\s+(\d+)(\s+[\d.]+){{4}}$", out, re.M)
        assert match, (row, out)
    assert re.search(r"^total\s+6\s", out, re.M)
    # Each client kept one conversation; its second prompt followed the first.
    users = Message.objects.filter(role="user").order_by("pk")
    assert users.count() == 6
    assert users.values("conversation").distinct().count() == 3
    assert set(users.values_list("owner__username", flat=True)) == {
        "mpai-load-1",
        "mpai-load-2",
        "mpai-load-3",
    }
    assert len(fake_openai.requests) == 6
    assert not Session.objects.exists()  # the load test's sessions were deleted


def test_provider_failures_are_reported_by_code_and_fail_on_error_raises(e2e_server, fake_openai):
    fake_openai.respond_error(401, "bad key", times=100)
    buf = io.StringIO()
    call_command(
        "mpai_loadtest", url=e2e_server.ws_url, users=3, messages=2, no_cache=True, stdout=buf
    )
    out = buf.getvalue()
    assert "turns: 0 ok, 6 failed (of 6)" in out, out
    assert "errors: provider_auth 6" in out
    assert re.search(r"^total\s+0\s+-", out, re.M)

    with pytest.raises(CommandError, match="6 of 6 turns failed"):
        call_command(
            "mpai_loadtest",
            url=e2e_server.ws_url,
            users=3,
            messages=2,
            no_cache=True,
            fail_on_error=True,
            stdout=io.StringIO(),
        )


def test_a_refused_handshake_is_a_client_failure(e2e_server):
    buf = io.StringIO()
    call_command(
        "mpai_loadtest",
        url=e2e_server.ws_url,
        users=2,
        messages=1,
        origin="http://evil.example",
        stdout=buf,
    )
    out = buf.getvalue()
    assert "turns: 0 ok, 2 failed (of 2)" in out, out
    assert f"errors: {loadtest.CLIENT_HANDSHAKE} 2" in out
    assert "HTTP 403" in out


def test_corpus_prompts_skip_hh_rlhf_and_unacceptable_texts(tmp_path):
    corpus = tmp_path / "conversations.jsonl"
    records = [
        {"source": "hh-rlhf:x", "turns": [{"role": "user", "content": "red team"}]},
        {
            "source": "oasst1:y",
            "turns": [
                {"role": "user", "content": "What is a token bucket?"},
                {"role": "assistant", "content": "A rate limiter."},
                {"role": "user", "content": "bad \x00 char"},
                {"role": "user", "content": "   "},
            ],
        },
    ]
    corpus.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert loadtest.load_prompts(corpus) == ["What is a token bucket?"]
    packaged = loadtest.load_prompts()
    assert len(packaged) > 50
    assert "red team" not in packaged


def test_origin_follows_the_url_scheme():
    assert loadtest.origin_for("ws://127.0.0.1:8000/ws/mpai/chat/") == "http://127.0.0.1:8000"
    assert loadtest.origin_for("wss://example.com/ws/mpai/chat/") == "https://example.com"


# --- a turn's own cost and the server's memory -----------------------------------------


def _row(out: str, label: str) -> list[float]:
    """The n, median, p95, p99 and max of a latency row (ms)."""
    match = re.search(rf"^{label}\s+(\d+)((?:\s+-?[\d.]+){{4}})$", out, re.M)
    assert match, (label, out)
    return [float(match[1]), *map(float, match[2].split())]


def _number(out: str, pattern: str) -> float:
    match = re.search(pattern, out, re.M)
    assert match, (pattern, out)
    return float(match[1])


def test_added_first_token_subtracts_the_providers_time_and_skips_cached_turns():
    turns = [
        loadtest.TurnTiming(1, 1, first_token_ms=350.0),
        loadtest.TurnTiming(1, 2, first_token_ms=310.5),
        loadtest.TurnTiming(2, 1, first_token_ms=5.0, cached=True),  # no provider call
        loadtest.TurnTiming(2, 2),  # no delta at all
        loadtest.TurnTiming(3, 1, first_token_ms=290.0),  # the provider was early
    ]
    assert loadtest.added_first_token_ms(turns, 300) == [-10.0, 10.5, 50.0]


def test_memory_per_item_is_in_kib_and_missing_without_items():
    assert loadtest.per_item_kib(10 * 1024, 5) == 2.0
    assert loadtest.per_item_kib(-2048, 2) == -1.0  # the server gave memory back
    assert loadtest.per_item_kib(None, 5) is None
    assert loadtest.per_item_kib(4096, 0) is None


def test_server_usage_per_turn_and_per_socket_figures():
    mib = 1024 * 1024
    usage = loadtest.ServerUsage(
        pid=42,
        cpu_run_s=2.5,
        cpu_turns_s=1.2,
        rss_before=100 * mib,
        rss_idle=101 * mib,
        rss_peak_streaming=111 * mib,
        rss_after=102 * mib,
        sockets=64,
        peak_streams=20,
        samples=9,
    )
    assert usage.cpu_per_turn_ms(60) == pytest.approx(20.0)
    assert usage.cpu_per_turn_ms(0) is None
    assert usage.idle_websocket_kib == 16.0  # 1 MiB over 64 websockets
    assert usage.open_stream_kib == 512.0  # 10 MiB over 20 streams
    assert usage.lines(60) == [
        "server pid 42: CPU 2.500 s during the run (user+system, children excluded), "
        "1.200 s during the turns, 20.0 ms per ok turn",
        "server RSS (MiB): 100.0 before, 101.0 idle (64 websockets), 111.0 peak streaming "
        "(9 samples), 102.0 after",
        "memory per idle websocket: 16.0 KiB; per open stream: 512.0 KiB (peak 20 streams)",
    ]
    gone = loadtest.ServerUsage(pid=7, rss_before=mib, error="cannot read the process: gone")
    lines = gone.lines(3)
    assert "CPU - s during the run" in lines[0]
    assert "- ms per ok turn" in lines[0]
    assert "1.0 before, - idle" in lines[1]
    assert lines[2].startswith("memory per idle websocket: - KiB; per open stream: - KiB")
    assert lines[3] == "  server: cannot read the process: gone"


def test_the_report_adds_added_first_token_overloaded_idle_and_server_lines():
    config = loadtest.LoadTestConfig(
        url="ws://x/ws/mpai/chat/",
        users=2,
        messages=2,
        prompts=["hi"],
        idle=3,
        provider_first_token_ms=100,
    )
    report = loadtest.LoadTestReport(
        config,
        turns=[
            loadtest.TurnTiming(
                1, 1, ok=True, code="complete", started_ms=5, first_token_ms=130, total_ms=400
            ),
            loadtest.TurnTiming(
                1, 2, ok=True, code="complete", started_ms=6, first_token_ms=160, total_ms=420
            ),
            loadtest.TurnTiming(2, 1, code=loadtest.OVERLOADED, total_ms=12.5),
            loadtest.TurnTiming(2, 2, code=loadtest.OVERLOADED, total_ms=7.25),
        ],
        connect_ms=[3.0, 4.0],
        wall_s=1.0,
        idle_connected=2,
        idle_open_at_end=1,
        peak_streams=2,
        server=loadtest.ServerUsage(pid=9, cpu_turns_s=0.1, sockets=4, peak_streams=2),
    )
    report.idle_handshake_errors["InvalidStatus: HTTP 403"] = 1
    out = report.format()
    assert "errors: overloaded 2" in out
    assert _row(out, "added first token") == [2, 45.0, 60.0, 60.0, 60.0]
    assert _row(out, "first token") == [2, 145.0, 160.0, 160.0, 160.0]
    assert _row(out, "overloaded") == [2, 9.9, 12.5, 12.5, 12.5]  # 9.875, printed .1f
    assert "idle websockets: 2 of 3 connected, 1 still open at the end" in out
    assert "  idle handshake: InvalidStatus: HTTP 403 (1 websockets)" in out
    assert "concurrent streams: peak 2" in out
    assert "0.100 s during the turns, 50.0 ms per ok turn" in out
    # Without the options, the rows and lines are not there.
    plain = loadtest.LoadTestReport(
        loadtest.LoadTestConfig(url="ws://x/", users=1, messages=1, prompts=["hi"]),
        turns=[loadtest.TurnTiming(1, 1, ok=True, code="complete", total_ms=1.0)],
    ).format()
    for absent in ("added first token", "overloaded", "idle websockets", "server"):
        assert absent not in plain, absent


def test_the_monitor_reads_a_process_and_samples_while_streams_are_open():
    monitor = loadtest.ServerMonitor(os.getpid())
    rss, cpu = monitor.rss(), monitor.cpu_s()
    assert rss is not None
    assert rss > 1024 * 1024
    assert cpu is not None
    assert cpu > 0
    streams = loadtest.OpenStreams()
    streams.opened()
    streams.opened()
    streams.closed()
    assert (streams.open, streams.peak) == (1, 2)
    monitor.start_sampling(streams, 0.01)
    try:
        wait_until(lambda: monitor.usage.samples >= 2, what="RSS sampled while a stream is open")
    finally:
        monitor.stop_sampling()
    assert monitor.usage.rss_peak_streaming is not None
    assert monitor.usage.rss_peak_streaming > 1024 * 1024
    assert monitor.usage.error is None


def test_a_server_pid_that_is_not_running_is_refused():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    with pytest.raises(ValueError, match=f"server process {process.pid}"):
        loadtest.ServerMonitor(process.pid)
    with pytest.raises(CommandError, match=f"server process {process.pid}"):
        call_command("mpai_loadtest", "--server-pid", str(process.pid), stdout=io.StringIO())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--idle", "-1"], "--idle must not be negative"),
        (["--provider-first-token-ms", "-5"], "--provider-first-token-ms must not be negative"),
    ],
)
def test_bad_new_options_are_refused(option, message):
    with pytest.raises(CommandError, match=message):
        call_command("mpai_loadtest", *option, stdout=io.StringIO())


@pytest.mark.parametrize("missing", ["psutil", "websockets"])
def test_without_a_client_library_the_command_names_the_loadtest_extra(monkeypatch, missing):
    import mpai

    monkeypatch.delitem(sys.modules, "mpai.loadtest", raising=False)
    monkeypatch.delattr(mpai, "loadtest", raising=False)
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(CommandError, match=re.escape('pip install "mpai[loadtest]"')):
        call_command("mpai_loadtest", "--users", "1", "--messages", "1")


@pytest.mark.slow
def test_a_turns_own_cost_and_the_servers_memory_against_a_real_server(e2e_server, fake_openai):
    # The fake provider waits delay_s before each part, so its own first token takes
    # 50 ms and a turn streams for 5 x 50 ms: long enough for RSS samples every 50 ms.
    fake_openai.stream_reply(PARTS, delay_s=0.05)
    assert e2e_server.process is not None
    buf = io.StringIO()
    call_command(
        "mpai_loadtest",
        url=e2e_server.ws_url,
        users=3,
        messages=2,
        idle=4,
        provider_first_token_ms=50,
        server_pid=e2e_server.process.pid,
        no_cache=True,
        stdout=buf,
    )
    out = buf.getvalue()
    assert "turns: 6 ok, 0 failed (of 6)" in out, out
    # Added first token: each turn's first token minus the provider's 50 ms.
    added, first = _row(out, "added first token"), _row(out, "first token")
    assert added[0] == first[0] == 6
    for mine, theirs in zip(added[1:], first[1:], strict=True):
        assert mine == pytest.approx(theirs - 50, abs=0.11)  # both rounded to 0.1 ms
    assert added[1] >= -1  # the provider's 50 ms are inside the client's time
    # The idle websockets connected, stayed open and count in the idle memory.
    assert "idle websockets: 4 of 4 connected, 4 still open at the end" in out
    peak = int(_number(out, r"^concurrent streams: peak (\d+)$"))
    assert 1 <= peak <= 3
    pid = e2e_server.process.pid
    assert _number(out, rf"^server pid {pid}: CPU ([\d.]+) s during the run") > 0
    assert _number(out, r"([\d.]+) ms per ok turn$") > 0
    rss = re.search(
        r"^server RSS \(MiB\): ([\d.]+) before, ([\d.]+) idle \(7 websockets\), ([\d.]+) peak "
        r"streaming \((\d+) samples\), ([\d.]+) after$",
        out,
        re.M,
    )
    assert rss, out
    assert all(float(value) > 0 for value in rss.groups())
    assert int(rss[4]) >= 1
    assert re.search(
        rf"^memory per idle websocket: -?[\d.]+ KiB; per open stream: -?[\d.]+ KiB "
        rf"\(peak {peak} streams\)$",
        out,
        re.M,
    ), out
    assert "server: " not in out  # the process could be read throughout
    assert set(Message.objects.filter(role="user").values_list("owner__username", flat=True)) == {
        "mpai-load-1",
        "mpai-load-2",
        "mpai-load-3",
    }  # the idle users sent nothing
    assert get_user_model().objects.filter(username="mpai-load-7").exists()
    assert not Session.objects.exists()


@pytest.fixture
def one_stream_server(django_db_setup, redis_server, fake_openai_url, fake_openai):
    """The demo server with one stream slot and no queue: a second turn is overloaded."""
    server = AsgiServer(
        {
            **server_env(redis_server.url, fake_openai_url),
            "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
            "MPAI_TEST_SETTINGS": json.dumps({"STREAM_WORKERS": 1, "STREAM_QUEUE": 0}),
        }
    )
    server.start()
    yield server
    fake_openai.reset()  # ends the stream that holds the slot, so the server can stop
    server.stop()


@pytest.mark.slow
def test_overloaded_turns_get_their_own_latency_row(one_stream_server, fake_openai):
    # The turn that gets the only slot never sees a token before the client's timeout,
    # so the other two find no slot whenever they come.
    fake_openai.stream_reply(PARTS, delay_s=60)
    buf = io.StringIO()
    call_command(
        "mpai_loadtest",
        url=one_stream_server.ws_url,
        users=3,
        messages=1,
        timeout=3,
        no_cache=True,
        stdout=buf,
    )
    out = buf.getvalue()
    assert f"errors: {loadtest.CLIENT_TIMEOUT} 1, overloaded 2" in out, out
    n, median, *_ = _row(out, "overloaded")
    assert n == 2
    assert median >= 0


# --- recorded conversations, --duration and the persistence check ----------------------

CONVERSATIONS = [
    {
        "id": "a",
        "source": "oasst1:a",
        "license": "Apache-2.0",
        "turns": [
            {"role": "user", "content": "A1: what is a websocket?"},
            {"role": "assistant", "content": "A full-duplex channel."},
            {"role": "user", "content": "A2: and a stream?"},
            {"role": "assistant", "content": "A sequence of deltas."},
            {"role": "user", "content": "A3: thanks"},
            {"role": "assistant", "content": "You are welcome."},
        ],
    },
    {"id": "x", "source": "hh-rlhf:x", "turns": [{"role": "user", "content": "red team"}]},
    {
        "id": "b",
        "source": "arena-hard-auto:b",
        "license": "Apache-2.0",
        "turns": [
            {"role": "user", "content": "B1: sort a list in Python"},
            {"role": "assistant", "content": "sorted(xs)"},
            {"role": "user", "content": "B2: in reverse?"},
            {"role": "assistant", "content": "sorted(xs, reverse=True)"},
        ],
    },
]


def _write_corpus(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_conversations_keep_their_user_turns_in_order_and_skip_what_the_server_refuses(
    tmp_path,
):
    records = [
        *CONVERSATIONS,
        {"source": "oasst1:c", "turns": [{"role": "user", "content": "bad \x00 char"}]},
        {"source": "oasst1:d", "turns": []},
        # A branch of "a" with other assistant turns: the same user turns, kept once.
        {**CONVERSATIONS[0], "id": "a2"},
        {
            "source": "oasst1:e",
            "turns": [
                {"role": "user", "content": "   "},
                {"role": "user", "content": "E2: kept"},
            ],
        },
    ]
    corpus = _write_corpus(tmp_path / "conversations.jsonl", records)
    assert loadtest.load_conversations(corpus) == [
        ["A1: what is a websocket?", "A2: and a stream?", "A3: thanks"],
        ["B1: sort a list in Python", "B2: in reverse?"],
        ["E2: kept"],
    ]
    # The flat prompts of the same file, in file order.
    assert loadtest.load_prompts(corpus)[:4] == [
        "A1: what is a websocket?",
        "A2: and a stream?",
        "A3: thanks",
        "B1: sort a list in Python",
    ]


def test_a_corpus_without_usable_conversations_or_with_a_bad_line_is_refused(tmp_path):
    only_red_team = _write_corpus(tmp_path / "red.jsonl", [CONVERSATIONS[1]])
    with pytest.raises(ValueError, match="No usable conversations"):
        loadtest.load_conversations(only_red_team)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CONVERSATIONS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        loadtest.load_conversations(bad)
    with pytest.raises(CommandError, match="No usable conversations"):
        call_command("mpai_loadtest", corpus=str(only_red_team), stdout=io.StringIO())


def test_the_default_corpus_is_the_env_var_then_the_shared_file_then_none(
    tmp_path, monkeypatch, settings
):
    monkeypatch.undo()  # the real default_corpus, not the autouse fixture's
    monkeypatch.delenv(loadtest.CORPUS_ENV, raising=False)
    settings.BASE_DIR = tmp_path / "project"
    assert loadtest.default_corpus() is None  # no shared file: the packaged prompts
    shared = tmp_path / "shared" / "data" / "conversations.jsonl"
    shared.parent.mkdir(parents=True)
    _write_corpus(shared, CONVERSATIONS)
    assert loadtest.default_corpus() == shared
    named = _write_corpus(tmp_path / "mine.jsonl", CONVERSATIONS[:1])
    monkeypatch.setenv(loadtest.CORPUS_ENV, str(named))
    assert loadtest.default_corpus() == named


def test_clients_replay_conversations_in_stride_and_packaged_prompts_in_one():
    conversations = [["a1", "a2", "a3"], ["b1", "b2"], ["c1"]]
    config = loadtest.LoadTestConfig(
        url="ws://x/", users=2, messages=4, prompts=[], conversations=conversations
    )
    first = loadtest._script(config, 1)
    assert [next(first) for _ in range(5)] == [
        ("a1", True),
        ("a2", False),
        ("a3", False),
        ("c1", True),  # conversation 0 + 1 x 2 users
        ("b1", True),  # 0 + 2 x 2 = 4, mod 3
    ]
    second = loadtest._script(config, 2)
    assert [next(second) for _ in range(3)] == [("b1", True), ("b2", False), ("a1", True)]
    packaged = loadtest.LoadTestConfig(url="ws://x/", users=2, messages=2, prompts=["p", "q", "r"])
    assert [next(loadtest._script(packaged, 2)) for _ in range(1)] == [("r", True)]
    script = loadtest._script(packaged, 2)
    assert [next(script) for _ in range(3)] == [("r", True), ("p", False), ("q", False)]


def test_the_persistence_lines_count_mismatches_by_kind():
    check = loadtest.PersistenceCheck(
        checked=5,
        mismatches=[
            (loadtest.MISSING, 7),
            (loadtest.OTHER_TEXT, 9),
            (loadtest.MISSING, None),
            (loadtest.OTHER_STATUS, 3),
        ],
    )
    assert check.lines() == [
        "persistence: 1 of 5 replies saved as streamed",
        "  missing: 2 (messages 7, None)",
        "  other status: 1 (messages 3)",
        "  other text: 1 (messages 9)",
    ]
    assert loadtest.PersistenceCheck(checked=3).lines() == [
        "persistence: 3 of 3 replies saved as streamed"
    ]


@pytest.fixture(scope="module")
def unlimited_server(django_db_setup, redis_server, fake_openai_url):
    """The demo server with the rate limit raised, for many turns per load-test user."""
    server = AsgiServer(
        {
            **server_env(redis_server.url, fake_openai_url),
            "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
            "MPAI_TEST_SETTINGS": json.dumps(
                {"RATE_LIMIT": {"CAPACITY": 100_000, "REFILL_RATE": 10_000}}
            ),
        }
    )
    server.start()
    yield server
    server.stop()


def _turns_by_user(username):
    """A load-test user's messages, oldest first: (conversation id, role, content)."""
    return list(
        Message.objects.filter(owner__username=username)
        .order_by("pk")
        .values_list("conversation_id", "role", "content")
    )


def test_recorded_conversations_are_replayed_turn_by_turn(
    unlimited_server, fake_openai, tmp_path, monkeypatch
):
    fake_openai.stream_reply(PARTS)
    corpus = _write_corpus(tmp_path / "conversations.jsonl", CONVERSATIONS)
    monkeypatch.setattr(loadtest, "default_corpus", lambda: corpus)  # no --corpus
    buf = io.StringIO()
    call_command(
        "mpai_loadtest",
        url=unlimited_server.ws_url,
        users=2,
        messages=5,
        no_cache=True,
        fail_on_error=True,
        stdout=buf,
    )
    out = buf.getvalue()
    assert "turns: 10 ok, 0 failed (of 10)" in out, out
    assert f"prompts: 2 recorded conversations from {corpus}, replayed turn by turn " in out
    assert "(5 mpai conversations)" in out
    assert "persistence: 10 of 10 replies saved as streamed" in out
    reply = "".join(PARTS)
    # Client 1 replays "a" (3 turns), then "a" again (conversation 0 + 1 x 2 users, mod 2);
    # client 2 replays "b" three times; each replay is one new mpai conversation.
    expected = {
        "mpai-load-1": [["A1", "A2", "A3"], ["A1", "A2"]],
        "mpai-load-2": [["B1", "B2"], ["B1", "B2"], ["B1"]],
    }
    for username, replays in expected.items():
        rows = _turns_by_user(username)
        conversations = list(dict.fromkeys(c for c, _, _ in rows))
        assert len(conversations) == len(replays), rows
        for conversation, prefixes in zip(conversations, replays, strict=True):
            mine = [(role, text) for c, role, text in rows if c == conversation]
            assert [role for role, _ in mine] == ["user", "assistant"] * len(prefixes)
            assert [text.split(":")[0] for role, text in mine if role == "user"] == prefixes
            assert all(text == reply for role, text in mine if role == "assistant")
    # The provider saw each conversation's history grow turn by turn.
    histories = [
        [m["content"] for m in r["messages"] if m["role"] == "user"] for r in fake_openai.requests
    ]
    assert ["A1: what is a websocket?", "A2: and a stream?", "A3: thanks"] in [
        [text for text in h if text.startswith("A")] for h in histories
    ]


@pytest.mark.slow
def test_duration_keeps_each_client_sending_until_the_time_is_up(
    unlimited_server, fake_openai, tmp_path
):
    fake_openai.stream_reply(PARTS)
    corpus = _write_corpus(tmp_path / "conversations.jsonl", CONVERSATIONS)
    buf = io.StringIO()
    call_command(
        "mpai_loadtest",
        url=unlimited_server.ws_url,
        users=2,
        duration=1.5,
        think_ms=100,
        corpus=str(corpus),
        no_cache=True,
        no_progress=True,
        stdout=buf,
    )
    out = buf.getvalue()  # the command returned: the clients stopped
    assert "2 users for 1.5 s, think 100 ms" in out, out
    ok = int(_number(out, r"^turns: (\d+) ok, 0 failed \(of \d+\)$"))
    assert ok >= 2
    assert f"persistence: {ok} of {ok} replies saved as streamed" in out
    for username in ("mpai-load-1", "mpai-load-2"):
        assert Message.objects.filter(owner__username=username, role="assistant").count() >= 1
    assert Message.objects.filter(role="assistant").count() == ok
    assert float(_number(out, r"^wall time: ([\d.]+) s")) >= 1.5


def test_messages_and_duration_are_mutually_exclusive():
    with pytest.raises(CommandError, match="mutually exclusive"):
        call_command("mpai_loadtest", messages=2, duration=5, stdout=io.StringIO())
    with pytest.raises(CommandError, match="--duration must be positive"):
        call_command("mpai_loadtest", duration=0, stdout=io.StringIO())


def test_the_persistence_check_reports_replies_not_saved_as_streamed(
    unlimited_server, fake_openai, monkeypatch
):
    fake_openai.stream_reply(PARTS)
    real_check = loadtest.check_persistence
    altered: list[int] = []

    def alter_then_check(turns):
        # Between the run and the check: change one reply, mark one failed, drop one.
        turns = list(turns)
        ids = [t.message for t in turns if t.ok]
        Message.objects.filter(pk=ids[0]).update(content="something else")
        Message.objects.filter(pk=ids[1]).update(status=Message.Status.ERROR)
        Message.objects.filter(pk=ids[2]).delete()
        altered.extend(ids[:3])
        return real_check(turns)

    monkeypatch.setattr(loadtest, "check_persistence", alter_then_check)
    buf = io.StringIO()
    with pytest.raises(CommandError, match=r"3 of 4 replies not saved as streamed"):
        call_command(
            "mpai_loadtest",
            url=unlimited_server.ws_url,
            users=2,
            messages=2,
            no_cache=True,
            fail_on_error=True,
            stdout=buf,
        )
    out = buf.getvalue()
    assert "turns: 4 ok, 0 failed (of 4)" in out, out
    assert "persistence: 1 of 4 replies saved as streamed" in out
    assert f"  missing: 1 (messages {altered[2]})" in out
    assert f"  other status: 1 (messages {altered[1]})" in out
    assert f"  other text: 1 (messages {altered[0]})" in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("no_progress", [False, True])
def test_the_progress_bar_counts_turns_on_a_terminals_stderr(
    unlimited_server, fake_openai, no_progress
):
    fake_openai.stream_reply(PARTS)
    err = _Terminal()
    call_command(
        "mpai_loadtest",
        url=unlimited_server.ws_url,
        users=2,
        messages=2,
        no_cache=True,
        no_progress=no_progress,
        stdout=io.StringIO(),
        stderr=err,
    )
    if no_progress:
        assert err.getvalue() == ""
    else:
        # Redrawn at most every 0.1 s and cleared at the end (leave=False).
        assert re.search(r"\rturns: +\d+%\|.*\| \d/4 \[", err.getvalue()), err.getvalue()
    plain = io.StringIO()  # not a terminal: no bar
    call_command(
        "mpai_loadtest",
        url=unlimited_server.ws_url,
        users=1,
        messages=1,
        no_cache=True,
        stdout=io.StringIO(),
        stderr=plain,
    )
    assert plain.getvalue() == ""
