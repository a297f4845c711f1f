"""The demo as `make run` ships it, in headless Chromium: the offline provider, the
membership site's tools and context, the widget on the home page; and a server that
stops and starts again while a message waits to go out.

Same stack as test_chat_page.py (its ``browser``, ``member`` and page helpers), but the
server runs the demo's own provider (no ``MPAI_PROVIDER_BASE_URL``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from mpai.models import Message
from tests.asgi_server import AsgiServer, server_env
from tests.browser import test_chat_page as chat_page

pytestmark = pytest.mark.django_db(transaction=True)

browser = chat_page.browser
member = chat_page.member

QUESTION = "What does my membership include?"


@pytest.fixture(scope="module")
def offline_server(django_db_setup, redis_server) -> Iterator[AsgiServer]:
    env = server_env(redis_server.url, "")
    for name in ("MPAI_PROVIDER_BASE_URL", "MPAI_PROVIDER_API_KEY", "MPAI_PROVIDER_MODEL"):
        env.pop(name)
    env["DJANGO_ALLOW_ASYNC_UNSAFE"] = ""
    server = AsgiServer(env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def chat(browser: Browser, offline_server: AsgiServer, request) -> Iterator[chat_page.ChatPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(chat_page.DEADLINE_MS)
    page = chat_page.ChatPage(context.new_page(), offline_server)
    failed_before = request.session.testsfailed
    try:
        yield page
        if page.errors:
            pytest.fail(f"uncaught errors in the page: {page.errors}")
        if request.session.testsfailed > failed_before:
            stem = page.save_artifacts(request.node.name)
            print(f"browser artifacts: {stem}.png, {stem}.log")
    finally:
        context.close()


def test_the_membership_question_is_answered_with_the_members_own_plan(chat, member):
    """The offline provider calls the membership tool (a status line shows it) and
    answers with the member's plan; the page shows what the database saved."""
    chat.sign_in(member)
    chat.ask(QUESTION)
    reply = chat.page.locator("#mpai-log > li.assistant").last
    expect(reply.locator(".mpai-actions")).to_be_visible()  # the reply has ended
    [saved] = Message.objects.filter(owner=member.user, role="assistant")
    assert saved.status == "complete"
    assert "**Monthly** plan ($12/month)" in saved.content  # the demo's default plan
    assert [call["name"] for call in saved.tool_calls] == ["get_my_memberships"]
    body = reply.locator(".mpai-body")
    expect(body.locator("strong").first).to_have_text("Monthly")
    # Markdown rendered: the text without its markers is the saved text's.
    shown = " ".join(body.inner_text().split())
    plain = " ".join(saved.content.replace("**", "").replace("- ", "").split())
    assert shown == plain


def test_after_a_server_restart_the_page_reconnects_and_a_message_goes_once(
    chat, member, offline_server
):
    """The server stops: the page says it is reconnecting and keeps what the member
    types (Send waits for the connection); the server starts again on the same port:
    the page reconnects by itself, and the message goes out and is answered once."""
    chat.sign_in(member)
    offline_server.stop()
    expect(chat.status).to_have_text("Reconnecting…")
    chat.input.fill(QUESTION)
    expect(chat.send).to_be_disabled()
    offline_server.start()
    # Reconnected: the backoff (with jitter) waits at most 30 s between attempts.
    expect(chat.send).to_be_enabled(timeout=45_000)
    expect(chat.input).to_have_value(QUESTION)  # nothing typed was lost
    chat.input.press("Enter")
    reply = chat.page.locator("#mpai-log > li.assistant").last
    expect(reply.locator(".mpai-actions")).to_be_visible()
    assert Message.objects.filter(owner=member.user, role="user", content=QUESTION).count() == 1
    assert Message.objects.filter(owner=member.user, role="assistant").count() == 1
    expect(chat.page.locator("#mpai-log > li.user")).to_have_count(1)
