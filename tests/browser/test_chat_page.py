"""The chat page in headless Chromium, against the demo ASGI app in a real uvicorn process.

The whole stack is real: Debian's ``/usr/bin/chromium`` driven by Playwright (``.ci/browser``
installs it), the login form, uvicorn with Channels on the private test Redis, the
pytest-django PostgreSQL test database (``transaction=True``: the server sees committed
rows), and the provider over HTTP (``tests/fake_openai.py``). Every wait has a deadline
(Playwright's ``expect``); nothing sleeps. A failing test leaves a screenshot, the page's
console and the server log in ``/tmp/mpai-browser-*``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from playwright.sync_api import Browser, Page, Route, WebSocket, expect, sync_playwright

from mpai.models import Message
from tests.asgi_server import AsgiServer, server_env

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEADLINE_MS = 15_000  # the longest any single wait may take
ARTIFACTS = Path("/tmp")
HISTORY_URL = re.compile(r"/api/mpai/v1/conversations/\d+/messages/")

expect.set_options(timeout=DEADLINE_MS)


@pytest.fixture(scope="module")
def chat_server(django_db_setup, redis_server, fake_openai_url) -> Iterator[AsgiServer]:
    """The demo project in uvicorn (it serves chat.js and chat.css also with DEBUG off)."""
    env = {
        **server_env(redis_server.url, fake_openai_url),
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOW_ASYNC_UNSAFE": "",  # the server keeps Django's check (see `browser`)
    }
    server = AsgiServer(env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; each test gets a fresh context (own temporary profile).

    Playwright's sync API keeps its event loop marked as running in this thread (in
    another greenlet) while it is open, so Django would take the tests' ORM calls, made
    between browser calls, for calls from async code: its check is off meanwhile, for
    this module only.
    """
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run .ci/browser (as root it installs Debian's chromium)"
        )
    with pytest.MonkeyPatch.context() as mp, sync_playwright() as playwright:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Member:
    username: str
    password: str
    user: Any


@pytest.fixture
def member(make_user) -> Member:
    """A user who can sign in through the form: the server checks passwords with the demo
    project's hashers (PBKDF2), not the tests' fast MD5 hasher."""
    password = "correct horse battery staple"
    user = make_user()
    user.password = make_password(password, hasher=PBKDF2PasswordHasher())
    user.save(update_fields=["password"])
    return Member(user.get_username(), password, user)


@dataclass
class ChatPage:
    """The chat page's elements, and what the browser saw while the test ran."""

    page: Page
    server: AsgiServer
    sockets: list[WebSocket] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input = self.page.locator("#mpai-input")
        self.send = self.page.locator("#mpai-send")
        self.stop = self.page.locator("#mpai-stop")
        self.status = self.page.locator("#mpai-status")
        self.items = self.page.locator("#mpai-log > li")  # one per message
        self.texts = self.page.locator("#mpai-log > li .mpai-body")  # their text
        self.page.on("websocket", lambda ws: self.sockets.append(ws))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))

    def sign_in(self, member: Member) -> None:
        """Open the site, get sent to the login form, sign in, land on the connected chat
        (the demo's home page: the widget in the site's layout)."""
        self.page.goto(f"{self.server.http_url}/")
        expect(self.page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
        self.page.get_by_label("Username").fill(member.username)
        self.page.get_by_label("Password").fill(member.password)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page).to_have_url(f"{self.server.http_url}/")
        self.wait_connected()

    def wait_connected(self) -> None:
        # Send is enabled once the websocket is open (and no reply is streaming).
        expect(self.send).to_be_enabled()
        expect(self.status).to_have_text("")

    @property
    def socket(self) -> WebSocket:
        return [ws for ws in self.sockets if ws.url.endswith("/ws/mpai/chat/")][-1]

    def ask(self, text: str) -> None:
        self.input.fill(text)
        self.send.click()

    def save_artifacts(self, name: str) -> Path:
        stem = ARTIFACTS / f"mpai-browser-{name}-{os.getpid()}"
        try:
            self.page.screenshot(path=f"{stem}.png", full_page=True)
        except Exception as exc:  # the page may be gone; the logs still help
            self.console.append(f"(no screenshot: {exc})")
        Path(f"{stem}.log").write_text(
            "page errors:\n"
            + "\n".join(self.errors)
            + "\n\nconsole:\n"
            + "\n".join(self.console)
            + f"\n\nserver log ({self.server.log_path}):\n"
            + self.server.log()[-20_000:]
        )
        return stem


@pytest.fixture
def chat(browser: Browser, chat_server: AsgiServer, request) -> Iterator[ChatPage]:
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    context.set_default_timeout(DEADLINE_MS)
    chat = ChatPage(context.new_page(), chat_server)
    failed_before = request.session.testsfailed
    try:
        yield chat
        if chat.errors:
            stem = chat.save_artifacts(request.node.name)
            pytest.fail(f"uncaught errors in the page: {chat.errors} (see {stem}.*)")
        if request.session.testsfailed > failed_before:  # the test body failed
            stem = chat.save_artifacts(request.node.name)
            print(f"browser artifacts: {stem}.png, {stem}.log")
    finally:
        context.close()


def assistant_messages(member: Member) -> list[Message]:
    return list(Message.objects.filter(owner=member.user, role="assistant").order_by("id"))


RECORD_REPLY_TEXTS = """() => {
  window.replyTexts = [];
  new MutationObserver(() => {
    const reply = document.querySelector("#mpai-log > li.assistant:last-child .mpai-body");
    if (reply && reply.textContent) window.replyTexts.push(reply.textContent);
  }).observe(document.getElementById("mpai-log"),
             {childList: true, subtree: true, characterData: true});
}"""


def test_sign_in_chat_and_see_the_exchange_again_after_a_reload(chat, member, fake_openai):
    parts = ["Your ", "membership ", "renews ", "on ", "the ", "first ", "of ", "the ", "month."]
    reply = "".join(parts)
    fake_openai.stream_reply(parts, delay_s=0.05)
    chat.sign_in(member)
    expect(chat.items).to_have_count(0)
    chat.page.evaluate(RECORD_REPLY_TEXTS)

    question = "When does my membership renew?"
    chat.ask(question)
    expect(chat.texts).to_have_text([question, reply])
    expect(chat.send).to_be_enabled()
    expect(chat.stop).to_be_disabled()
    expect(chat.status).to_have_text("")
    expect(chat.input).to_have_value("")
    expect(chat.items.nth(0)).to_contain_class("user")
    expect(chat.items.nth(1)).to_contain_class("assistant")
    # The reply grew delta by delta in the page, not all at once.
    texts = chat.page.evaluate("window.replyTexts")
    assert texts[-1] == reply
    assert len(set(texts)) > 1
    assert all(reply.startswith(text) for text in texts)

    [saved] = assistant_messages(member)
    assert (saved.status, saved.content) == ("complete", reply)

    # The page reopens the conversation it showed. Until its messages are in and the
    # websocket open, Send is off: the page says so.
    while_loading: list[tuple[bool, str | None]] = []

    def look_then_continue(route: Route) -> None:
        while_loading.append((chat.send.is_disabled(), chat.status.text_content()))
        route.continue_()

    chat.page.route(HISTORY_URL, look_then_continue)
    with chat.page.expect_response(HISTORY_URL) as history:
        chat.page.reload()
    assert history.value.url.endswith(
        f"/api/mpai/v1/conversations/{saved.conversation_id}/messages/?cursor=last"
    )  # the newest page first
    assert history.value.status == 200
    expect(chat.texts).to_have_text([question, reply])
    expect(chat.items.nth(0)).to_contain_class("user")
    expect(chat.items.nth(1)).to_contain_class("assistant")
    chat.wait_connected()
    assert while_loading == [(True, "Connecting…")]

    # The page goes on with the conversation it reopened.
    fake_openai.stream_reply(["On ", "the ", "first."])
    chat.ask("Which day exactly?")
    expect(chat.texts).to_have_text([question, reply, "Which day exactly?", "On the first."])
    expect(chat.send).to_be_enabled()
    assert {m.conversation_id for m in Message.objects.filter(owner=member.user)} == {
        saved.conversation_id
    }
    assert {"role": "user", "content": question} in fake_openai.requests[-1]["messages"]


def test_stop_button_stops_a_slow_reply_and_the_partial_text_is_saved(chat, member, fake_openai):
    fake_openai.stream_reply(["slow "] * 400, delay_s=0.05)
    chat.sign_in(member)
    chat.ask("Tell me a very long story.")
    reply = chat.items.nth(1)
    expect(chat.texts.nth(1)).to_have_text(re.compile(r"^slow slow"))
    expect(chat.stop).to_be_enabled()
    expect(chat.send).to_be_disabled()

    # Enter while a reply streams does not send: the text waits in the box.
    chat.input.fill("And then?")
    chat.input.press("Enter")
    expect(chat.input).to_have_value("And then?")
    expect(chat.items).to_have_count(2)

    chat.stop.click()
    expect(reply.locator(".mpai-note")).to_have_text("Stopped")  # on that reply
    expect(chat.status).to_have_text("")
    expect(chat.send).to_be_enabled()
    expect(chat.stop).to_be_disabled()
    shown = chat.texts.nth(1).text_content()
    assert shown is not None
    assert shown.startswith("slow slow")
    assert len(shown) < len("slow ") * 400
    [saved] = assistant_messages(member)
    assert saved.status == "cancelled"
    assert saved.content.strip() == shown.strip()  # Markdown drops the trailing space
    assert Message.objects.filter(owner=member.user, role="user").count() == 1

    # The connection is still good: the waiting text goes out now.
    fake_openai.stream_reply(["The ", "end."])
    chat.input.press("Enter")
    expect(chat.texts).to_have_text(["Tell me a very long story.", shown, "And then?", "The end."])
    expect(chat.items.nth(3).locator(".mpai-note")).to_have_count(0)
    expect(chat.status).to_have_text("")
    expect(chat.send).to_be_enabled()


def test_stop_right_after_send_stops_the_reply(chat, member, fake_openai):
    """A stop clicked before ``chat.started`` arrives still stops the reply."""
    fake_openai.stream_reply(["slow "] * 400, delay_s=0.05)
    chat.sign_in(member)
    chat.input.fill("Tell me a very long story.")
    # Both clicks in one task: the cancel is asked before the server has started the turn.
    chat.page.evaluate(
        """() => {
          document.getElementById("mpai-send").click();
          document.getElementById("mpai-stop").click();
        }"""
    )
    expect(chat.items.nth(1).locator(".mpai-note")).to_have_text("Stopped")
    expect(chat.send).to_be_enabled()
    expect(chat.stop).to_be_disabled()
    [saved] = assistant_messages(member)
    assert saved.status == "cancelled"
    assert saved.content.strip() == (chat.texts.nth(1).text_content() or "").strip()
    assert len(saved.content) < len("slow ") * 400


def test_an_error_frame_shows_its_detail_and_marks_the_reply(chat, member, fake_openai):
    fake_openai.stream_then_error(["Half ", "a ", "reply"], "upstream model crashed")
    chat.sign_in(member)
    with chat.socket.expect_event(
        "framereceived", predicate=lambda payload: '"chat.error"' in str(payload)
    ) as event:
        chat.ask("Tell me everything.")
    frame = json.loads(event.value)
    assert frame["code"] == "provider_error"

    reply = chat.items.nth(1)
    # In words, on the reply it concerns, with what to do.
    note = reply.locator(".mpai-note")
    expect(note).to_contain_text("The assistant is unavailable right now. Try again in a moment.")
    expect(note.get_by_role("button", name="Retry")).to_be_visible()
    expect(chat.status).to_have_text("")
    expect(chat.texts.nth(1)).to_have_text("Half a reply")
    expect(reply).to_contain_class("assistant error")
    expect(reply).to_have_attribute("data-message", str(frame["message"]))
    expect(chat.send).to_be_enabled()
    expect(chat.stop).to_be_disabled()
    [saved] = assistant_messages(member)
    assert (saved.status, saved.error_code, saved.content) == (
        "error",
        "provider_error",
        "Half a reply",
    )

    # Retry asks the same question again, as a new turn.
    fake_openai.stream_reply(["The ", "whole ", "reply."])
    note.get_by_role("button", name="Retry").click()
    expect(chat.texts).to_have_text(
        ["Tell me everything.", "Half a reply", "Tell me everything.", "The whole reply."]
    )
    assert [m.status for m in assistant_messages(member)] == ["error", "complete"]

    chat.page.reload()  # the history marks it too
    expect(chat.texts).to_have_text(
        ["Tell me everything.", "Half a reply", "Tell me everything.", "The whole reply."]
    )
    expect(chat.items.nth(1)).to_contain_class("assistant error")
