"""``mpai_loadtest`` against the demo ASGI app in a real uvicorn process (test database,
private Redis, the fake provider)."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command

from mpai import loadtest
from mpai.models import Message

pytestmark = pytest.mark.django_db(transaction=True)

PARTS = ["Load ", "tests ", "measure ", "the ", "server."]


# The private Redis (and its response cache) lives for the whole session and the
# load-test users' names repeat, so the tests send "cache": false (--no-cache).


def test_all_turns_succeed_and_the_report_has_percentiles(e2e_server, fake_openai):
    fake_openai.stream_reply(PARTS)
    buf = io.StringIO()
    call_command(
        "mpai_loadtest", url=e2e_server.ws_url, users=3, messages=2, no_cache=True, stdout=buf
    )
    out = buf.getvalue()
    assert "turns: 6 ok, 0 failed (of 6)" in out, out
    assert "errors: none" in out
    assert (
        f"replies: {6 * len(PARTS)} deltas, {6 * len(''.join(PARTS))} characters, "
        "0 from the response cache"
    ) in out
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
