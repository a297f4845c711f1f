"""The chat widget (``{% mpai_chat %}`` on the demo's chat page) in headless Chromium.

Same stack and fixtures as test_chat_page.py: Debian's chromium through Playwright, the
demo in uvicorn (DEBUG off, so under its Content-Security-Policy), the test database
(committed rows: ``transaction=True``), the private Redis and the fake provider. Every
wait has a deadline (``expect``); nothing sleeps. A failing test leaves a screenshot and
the logs in ``/tmp/mpai-browser-*``; ``test_screenshots_at_desktop_and_phone_widths``
leaves ``/tmp/mpai-screenshots/widget-1280.png`` and ``widget-390.png`` to look at.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, WebSocketRoute, expect

from mpai.models import Conversation, Feedback, Message
from tests.asgi_server import AsgiServer
from tests.browser import test_chat_page as chat_page

pytestmark = pytest.mark.django_db(transaction=True)

# The fixtures of the chat page's tests, by assignment (pytest finds them here).
browser = chat_page.browser
chat_server = chat_page.chat_server
member = chat_page.member

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path("/tmp/mpai-screenshots")
WS_URL = re.compile(r"/ws/mpai/chat/$")


class Widget(chat_page.ChatPage):
    """The widget's elements (on top of the chat page's: input, send, stop, status)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        page = self.page
        self.bodies = page.locator("#mpai-log > li .mpai-body")
        self.replies = page.locator("#mpai-log > li.assistant")
        self.questions = page.locator("#mpai-log > li.user")
        self.conversations = page.locator("#mpai-conversations > li:not([hidden])")
        self.welcome = page.locator("#mpai-welcome")
        self.title = page.locator("#mpai-title")
        self.counter = page.locator("#mpai-counter")
        self.history_status = page.locator("#mpai-history-status")
        self.live = page.locator("#mpai-live")

    def reply(self, n: int = -1):
        return self.replies.nth(n) if n >= 0 else self.replies.last

    def body(self, item):
        return item.locator(".mpai-body")

    def open_conversation(self, title: str) -> None:
        self.page.locator(".mpai-conversation-open", has_text=title).click()
        expect(self.title).to_have_text(title)


RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


@pytest.fixture
def widget(browser: Browser, chat_server: AsgiServer, request) -> Iterator[Widget]:
    yield from open_widget(browser, chat_server, request, {"width": 1280, "height": 800})


def open_widget(browser, chat_server, request, viewport, **options) -> Iterator[Widget]:
    """A fresh context on the widget; at the end, no uncaught error and no CSP violation."""
    context = browser.new_context(viewport=viewport, **options)
    context.set_default_timeout(chat_page.DEADLINE_MS)
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    chat = Widget(context.new_page(), chat_server)
    failed_before = request.session.testsfailed
    try:
        yield chat
        violations = chat.page.evaluate("window.cspViolations")
        if violations:
            chat.errors.append(f"Content-Security-Policy violations: {violations}")
        if chat.errors:
            stem = chat.save_artifacts(request.node.name)
            pytest.fail(f"uncaught errors in the page: {chat.errors} (see {stem}.*)")
        if request.session.testsfailed > failed_before:
            stem = chat.save_artifacts(request.node.name)
            print(f"browser artifacts: {stem}.png, {stem}.log")
    finally:
        context.close()


def make_conversation(user: Any, title: str, count: int, *, age_minutes: int = 60) -> Conversation:
    """A conversation of ``count`` messages (user, assistant, … one minute apart)."""
    conversation = Conversation.objects.create(owner=user, title=title)
    start = timezone.now() - datetime.timedelta(minutes=age_minutes)
    rows = [
        Message(
            conversation=conversation,
            owner=user,
            role="user" if i % 2 == 0 else "assistant",
            content=f"{title} message {i}",
            status="complete",
        )
        for i in range(count)
    ]
    Message.objects.bulk_create(rows)
    for i, row in enumerate(rows):
        Message.objects.filter(pk=row.pk).update(
            created_at=start + datetime.timedelta(seconds=30 * i)
        )
    Conversation.objects.filter(pk=conversation.pk).update(
        updated_at=start + datetime.timedelta(seconds=30 * count)
    )
    return conversation


RECORD_REPLY_TEXTS = """() => {
  window.replyTexts = [];
  new MutationObserver(() => {
    const reply = document.querySelector("#mpai-log > li.assistant:last-child .mpai-body");
    if (reply && reply.textContent) window.replyTexts.push(reply.textContent);
  }).observe(document.getElementById("mpai-log"),
             {childList: true, subtree: true, characterData: true});
}"""

MARKDOWN_PARTS = [
    "Here is **bold** text",
    " and `inline code`.\n\n",
    "- one\n- two\n\n",
    "```python\nprint('hi')\n```\n\n",
    '<img src="x" onerror="window.__pwned = 1">',
    "<script>window.__pwned = 2</script>",
    ' [a link](https://example.com) <a href="javascript:window.__pwned=3">js</a>',
]


def test_a_question_streams_in_as_sanitised_markdown_equal_to_the_saved_reply(
    widget, member, fake_openai
):
    fake_openai.stream_reply(MARKDOWN_PARTS, delay_s=0.05)
    widget.sign_in(member)
    expect(widget.welcome).to_be_visible()
    widget.page.evaluate(RECORD_REPLY_TEXTS)
    question = "<script>window.__pwned = 4</script><img src=x onerror='window.__pwned=5'> *hi*"
    widget.ask(question)

    reply = widget.reply()
    expect(reply.locator(".mpai-actions")).to_be_visible()  # the reply is complete
    [saved] = Message.objects.filter(owner=member.user, role="assistant")
    assert (saved.status, saved.content) == ("complete", "".join(MARKDOWN_PARTS))
    expect(reply).to_have_attribute("data-message", str(saved.pk))
    # The user's text is text: no element, no Markdown.
    expect(widget.body(widget.questions.first)).to_have_text(question)
    assert widget.questions.first.locator(".mpai-body *").count() == 0
    # The reply's Markdown is formatting; its HTML is gone, nothing ran.
    body = widget.body(reply)
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("li")).to_have_text(["one", "two"])
    expect(body.locator("pre code")).to_have_text("print('hi')\n")
    expect(body.locator(".mpai-code button")).to_have_text("Copy code")
    expect(body.locator("a[href='https://example.com']")).to_have_attribute(
        "rel", "noopener noreferrer nofollow"
    )
    expect(body).to_contain_text('<img src="x" onerror="window.__pwned = 1">')  # as text
    expect(body).to_contain_text("<script>window.__pwned = 2</script>")
    assert body.locator("img, script, [onerror]").count() == 0
    assert body.locator("a[href^='javascript']").count() == 0
    assert widget.page.evaluate("window.__pwned") is None
    expect(widget.live).to_contain_text("Assistant: Here is bold text")

    # The reply grew delta by delta, not all at once.
    texts = widget.page.evaluate("window.replyTexts")
    assert len(set(texts)) > 2
    # The new conversation heads the sidebar and is the one shown.
    expect(widget.conversations).to_have_count(1)
    expect(widget.conversations.first).to_have_attribute(
        "data-conversation", str(saved.conversation_id)
    )
    expect(widget.send).to_be_enabled()
    expect(widget.input).to_have_value("")

    # Copy puts the reply's Markdown on the clipboard.
    widget.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    reply.get_by_role("button", name="Copy", exact=True).click()
    expect(reply.get_by_role("button", name="Copied")).to_be_visible()
    assert widget.page.evaluate("navigator.clipboard.readText()") == saved.content

    # After a reload the same conversation is shown again, rendered the same way.
    widget.page.reload()
    widget.wait_connected()
    expect(widget.bodies).to_have_count(2)
    expect(widget.body(widget.reply()).locator("strong")).to_have_text("bold")
    assert widget.page.evaluate("window.__pwned") is None


def test_screenshots_at_desktop_and_phone_widths(
    browser, chat_server, member, fake_openai, request
):
    for n in range(3):
        make_conversation(member.user, f"Billing question {n}", 4, age_minutes=90 - n)
    fake_openai.stream_reply(
        [
            "The **annual plan** costs less per month.\n\n",
            "1. Open *Account*\n2. Choose *Upgrade*\n\n",
            "```\nplan = annual\n```",
        ]
    )
    SCREENSHOTS.mkdir(exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        pages = open_widget(browser, chat_server, request, {"width": width, "height": height})
        widget = next(pages)
        widget.page.emulate_media(reduced_motion="reduce")  # no slide: a still picture
        widget.sign_in(member)
        widget.page.screenshot(path=str(SCREENSHOTS / f"widget-{width}-welcome.png"))
        widget.ask("How do I upgrade to the annual plan?")
        expect(widget.reply().locator(".mpai-actions")).to_be_visible()
        widget.page.screenshot(path=str(SCREENSHOTS / f"widget-{width}.png"))
        widget.input.fill("x" * 8120)  # the counter and the refusal to send
        expect(widget.counter).to_have_text("8,120 / 8,000")
        widget.page.screenshot(path=str(SCREENSHOTS / f"widget-{width}-too-long.png"))
        widget.input.fill("")
        fake_openai.stream_then_error(["Half ", "a ", "reply"], "upstream model crashed")
        widget.ask("And the monthly plan?")
        expect(widget.reply().locator(".mpai-note")).to_contain_text("unavailable")
        widget.page.screenshot(path=str(SCREENSHOTS / f"widget-{width}-error.png"))
        fake_openai.stream_reply(
            ["The **annual plan** costs less per month.\n\n", "1. Open *Account*\n"]
        )
        if width < 700:
            widget.page.get_by_role("button", name="Chats").click()
            expect(widget.page.locator("#mpai-sidebar")).to_be_visible()
            widget.page.screenshot(path=str(SCREENSHOTS / f"widget-{width}-sidebar.png"))
        for _ in pages:
            pass


def test_stop_marks_that_reply_stopped_and_keeps_its_partial_text(widget, member, fake_openai):
    fake_openai.stream_reply(["slow "] * 400, delay_s=0.05)
    widget.sign_in(member)
    widget.ask("Tell me a very long story.")
    reply = widget.reply()
    expect(widget.body(reply)).to_have_text(re.compile(r"^slow slow"))
    expect(widget.stop).to_be_enabled()
    expect(widget.send).to_be_disabled()
    widget.stop.click()
    expect(reply.locator(".mpai-note")).to_have_text("Stopped")
    expect(widget.send).to_be_enabled()
    expect(widget.stop).to_be_disabled()
    expect(widget.status).to_have_text("")  # no global line that lingers
    [saved] = Message.objects.filter(owner=member.user, role="assistant")
    assert saved.status == "cancelled"
    shown = widget.body(reply).text_content()
    assert shown.strip() == saved.content.strip()  # Markdown: "slow slow " shows as "slow slow"
    assert len(saved.content) < len("slow ") * 400

    # The next reply is not marked; the stopped one still is, also after a reload.
    fake_openai.stream_reply(["The ", "end."])
    widget.ask("And then?")
    expect(widget.body(widget.reply(1))).to_have_text("The end.")
    expect(widget.reply(1).locator(".mpai-note")).to_have_count(0)
    widget.page.reload()
    expect(widget.replies).to_have_count(2)
    expect(widget.reply(0).locator(".mpai-note")).to_have_text("Stopped")


def test_scrolling_up_loads_older_pages_until_the_start(widget, member):
    conversation = make_conversation(member.user, "Long talk", 70)  # 4 pages of 20
    expected = list(
        Message.objects.filter(conversation=conversation)
        .order_by("created_at", "id")
        .values_list("content", flat=True)
    )
    widget.sign_in(member)
    with widget.page.expect_response(re.compile(r"/messages/\?cursor=")) as first:
        widget.open_conversation("Long talk")
    assert first.value.status == 200
    expect(widget.bodies.last).to_have_text(expected[-1])
    expect(widget.bodies).to_have_count(20)
    assert widget.page.evaluate(
        "() => { const s = document.getElementById('mpai-scroll');"
        " return s.scrollHeight - s.scrollTop - s.clientHeight < 5; }"
    )
    seen = [20]
    for _ in range(6):
        if widget.bodies.count() == 70:
            break
        count = widget.bodies.count()
        widget.page.locator("#mpai-scroll").evaluate("s => { s.scrollTop = 0; }")
        expect(widget.bodies).not_to_have_count(count)
        seen.append(widget.bodies.count())
    expect(widget.history_status).to_have_text("This is the start of the chat.")
    assert seen == [20, 40, 60, 70]
    assert widget.bodies.all_text_contents() == expected
    # The view stayed where the reader was: the first message of the last page loaded
    # is just below the top, not the bottom of the log.
    assert widget.page.locator("#mpai-scroll").evaluate("s => s.scrollTop") > 0


def test_switch_rename_and_delete_conversations(widget, member):
    for n in range(23):  # more than one page of the sidebar (20)
        make_conversation(member.user, f"Old chat {n:02}", 2, age_minutes=500 - n)
    make_conversation(member.user, "Payment methods", 4, age_minutes=30)
    make_conversation(member.user, "Annual plan", 2, age_minutes=10)
    widget.sign_in(member)
    expect(widget.conversations.nth(0)).to_have_text(re.compile("^Annual plan"))
    expect(widget.conversations.nth(1)).to_have_text(re.compile("^Payment methods"))
    # The rest comes as the sidebar scrolls.
    widget.page.locator(".mpai-sidebar-lists").evaluate("s => { s.scrollTop = s.scrollHeight; }")
    expect(widget.conversations).to_have_count(25)
    expect(widget.conversations.last).to_have_text(re.compile("^Old chat 00"))

    widget.open_conversation("Payment methods")
    expect(widget.bodies).to_have_text([f"Payment methods message {i}" for i in range(4)])
    widget.open_conversation("Annual plan")
    expect(widget.bodies).to_have_text(["Annual plan message 0", "Annual plan message 1"])

    # Rename: the pencil, a new name, Enter.
    widget.page.get_by_role("button", name="Rename Payment methods").click()
    box = widget.page.get_by_role("textbox", name="New name for Payment methods")
    expect(box).to_be_focused()
    box.fill("Cards and PayPal")
    box.press("Enter")
    expect(
        widget.page.locator(".mpai-conversation-open", has_text="Cards and PayPal")
    ).to_be_visible()
    assert Conversation.objects.get(title="Cards and PayPal").owner == member.user

    # Delete the open one, after confirming: the widget goes back to a new chat.
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    widget.page.on("dialog", accept)
    widget.page.get_by_role("button", name="Delete Annual plan").click()
    expect(widget.page.locator(".mpai-conversation-open", has_text="Annual plan")).to_have_count(0)
    assert dialogs == ["Delete the chat “Annual plan” and all its messages? This can't be undone."]
    expect(widget.title).to_have_text("New chat")
    expect(widget.welcome).to_be_visible()
    assert not Conversation.objects.filter(title="Annual plan").exists()
    # A deletion not confirmed deletes nothing.
    widget.page.remove_listener("dialog", accept)
    widget.page.once("dialog", lambda dialog: dialog.dismiss())
    widget.page.get_by_role("button", name="Delete Cards and PayPal").click()
    expect(
        widget.page.locator(".mpai-conversation-open", has_text="Cards and PayPal")
    ).to_be_visible()
    assert Conversation.objects.filter(title="Cards and PayPal").exists()


def test_search_finds_messages_and_opens_their_conversation(widget, member):
    make_conversation(member.user, "Travel plans", 2)
    conversation = make_conversation(member.user, "Refunds", 2, age_minutes=30)
    Message.objects.filter(conversation=conversation, role="assistant").update(
        content="Refunds for the annual plan arrive within five working days."
    )
    widget.sign_in(member)
    with widget.page.expect_response(re.compile(r"/api/mpai/v1/search/\?q=working")) as search:
        widget.page.get_by_label("Search your chats").fill("working")
    assert search.value.status == 200
    results = widget.page.locator("#mpai-search-results .mpai-search-result")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("Refunds")
    expect(results.first.locator("mark")).to_have_text("working")
    results.first.click()
    expect(widget.title).to_have_text("Refunds")
    expect(widget.bodies.last).to_have_text(
        "Refunds for the annual plan arrive within five working days."
    )
    # Escape in the box clears the search and shows the chats again.
    widget.page.get_by_label("Search your chats").press("Escape")
    expect(results).to_have_count(0)
    expect(widget.conversations).to_have_count(2)


def test_feedback_with_a_comment_is_saved_and_can_be_withdrawn(widget, member, fake_openai):
    fake_openai.stream_reply(["You can ", "pay by card."])
    widget.sign_in(member)
    widget.ask("How can I pay?")
    reply = widget.reply()
    expect(reply.locator(".mpai-actions")).to_be_visible()
    [saved] = Message.objects.filter(owner=member.user, role="assistant")

    reply.get_by_role("button", name="Helpful", exact=True).click()
    expect(reply.get_by_role("button", name="Helpful", exact=True)).to_have_attribute(
        "aria-pressed", "true"
    )
    comment = reply.get_by_label("What was good? (optional)")
    expect(comment).to_be_visible()
    assert Feedback.objects.get(message=saved).rating == "up"
    comment.fill("Short and clear.")
    reply.get_by_role("button", name="Send comment").click()
    expect(reply.locator(".mpai-feedback-note")).to_have_text("Thanks for your feedback.")
    feedback = Feedback.objects.get(message=saved)
    assert (feedback.rating, feedback.comment, feedback.user) == (
        "up",
        "Short and clear.",
        member.user,
    )

    reply.get_by_role("button", name="Not helpful", exact=True).click()
    expect(reply.get_by_role("button", name="Not helpful", exact=True)).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(reply.get_by_role("button", name="Helpful", exact=True)).to_have_attribute(
        "aria-pressed", "false"
    )
    assert Feedback.objects.get(message=saved).rating == "down"
    # After a reload the reply shows the member's rating.
    widget.page.reload()
    reply = widget.reply()
    expect(reply.get_by_role("button", name="Not helpful", exact=True)).to_have_attribute(
        "aria-pressed", "true"
    )
    reply.get_by_role("button", name="Not helpful", exact=True).click()  # again: withdrawn
    expect(reply.locator(".mpai-feedback-note")).to_have_text("Feedback removed.")
    assert not Feedback.objects.filter(message=saved).exists()


def test_a_too_long_message_keeps_its_text_and_shows_the_counter(widget, member):
    widget.sign_in(member)
    text = "x" * 8120
    widget.input.fill(text)
    expect(widget.counter).to_have_text("8,120 / 8,000")
    expect(widget.counter).to_contain_class("mpai-counter--over")
    expect(widget.send).to_be_disabled()
    expect(widget.page.locator("#mpai-cooldown")).to_have_text(
        "Too long to send: shorten your message."
    )
    widget.input.press("Enter")
    expect(widget.input).to_have_value(text)
    expect(widget.bodies).to_have_count(0)
    widget.page.reload()  # the draft survives a reload of the tab
    expect(widget.input).to_have_value(text)
    expect(widget.counter).to_have_text("8,120 / 8,000")
    expect(widget.send).to_be_disabled()
    widget.input.press("End")
    for _ in range(120):
        widget.input.press("Backspace")
    expect(widget.counter).to_have_text("8,000 / 8,000")
    expect(widget.send).to_be_enabled()
    assert not Message.objects.filter(owner=member.user).exists()


def test_keyboard_only_ask_add_a_line_and_stop(widget, member, fake_openai):
    widget.sign_in(member)
    keyboard = widget.page.keyboard
    for _ in range(40):  # Tab from the top of the page to the message box
        if widget.page.evaluate("document.activeElement.id") == "mpai-input":
            break
        keyboard.press("Tab")
    expect(widget.input).to_be_focused()
    fake_openai.stream_reply(["slow "] * 400, delay_s=0.05)
    keyboard.type("First line")
    keyboard.press("Shift+Enter")
    keyboard.type("second line")
    expect(widget.input).to_have_value("First line\nsecond line")
    keyboard.press("Enter")
    expect(widget.body(widget.questions.first)).to_have_text("First line\nsecond line")
    expect(widget.body(widget.reply())).to_have_text(re.compile(r"^slow slow"))
    keyboard.press("Escape")
    expect(widget.reply().locator(".mpai-note")).to_have_text("Stopped")
    expect(widget.send).to_be_enabled()
    [saved] = Message.objects.filter(owner=member.user, role="user")
    assert saved.content == "First line\nsecond line"


FOCUS_RINGS = """() => [...document.querySelectorAll(
  '#mpai-chat button, #mpai-chat textarea, #mpai-chat input')]
  .filter(e => e.offsetParent !== null && !e.disabled).map(e => {
    e.focus({focusVisible: true});
    const style = getComputedStyle(e);
    return [e.id || e.textContent.trim(), style.outlineStyle, style.outlineWidth];
  })"""


@pytest.fixture
def widget_without_csp(browser, chat_server, request) -> Iterator[Widget]:
    """The widget in a context that lets axe-core (a script of the test) in."""
    yield from open_widget(
        browser, chat_server, request, {"width": 1280, "height": 800}, bypass_csp=True
    )


def test_the_widget_has_no_serious_accessibility_violations(
    widget_without_csp, member, fake_openai
):
    widget = widget_without_csp
    make_conversation(member.user, "Earlier chat", 4)
    fake_openai.stream_reply(["**Yes**: ", "your plan includes ", "`all courses`."])
    widget.sign_in(member)
    widget.ask("What does my membership include?")
    expect(widget.reply().locator(".mpai-actions")).to_be_visible()
    widget.reply().get_by_role("button", name="Helpful", exact=True).click()
    expect(widget.reply().get_by_label("What was good? (optional)")).to_be_visible()
    widget.page.add_script_tag(path=str(AXE))
    for width in (1280, 360):
        widget.page.set_viewport_size({"width": width, "height": 800})
        result = widget.page.evaluate(
            "async () => await axe.run(document.getElementById('mpai-chat'),"
            " {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']})"
        )
        bad = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert bad == [], json.dumps(bad, indent=1)
    widget.page.set_viewport_size({"width": 1280, "height": 800})
    rings = widget.page.evaluate(FOCUS_RINGS)
    assert rings
    assert [r for r in rings if r[1] == "none" or r[2] == "0px"] == []


def test_the_phone_layout_hides_the_sidebar_behind_a_button(browser, chat_server, member, request):
    make_conversation(member.user, "Earlier chat", 2)
    for widget in open_widget(browser, chat_server, request, {"width": 360, "height": 740}):
        widget.sign_in(member)
        sidebar = widget.page.locator("#mpai-sidebar")
        toggle = widget.page.get_by_role("button", name="Chats")
        expect(sidebar).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        form = widget.page.locator("#mpai-form").bounding_box()
        assert form is not None
        assert abs(form["y"] + form["height"] - 740) < 2  # pinned to the bottom
        assert widget.page.evaluate("document.documentElement.scrollWidth") <= 360
        toggle.click()
        expect(sidebar).to_be_visible()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        widget.open_conversation("Earlier chat")  # closes the sidebar again
        expect(sidebar).to_be_hidden()
        expect(widget.bodies).to_have_count(2)


def test_suggested_questions_on_the_welcome_screen_send_themselves(widget, member, fake_openai):
    fake_openai.stream_reply(["Courses, ", "events and the forum."])
    widget.sign_in(member)
    suggestions = widget.page.locator(".mpai-suggestion")
    expect(suggestions).to_have_count(4)
    widget.page.get_by_role("button", name="What does my membership include?").click()
    expect(widget.bodies).to_have_text(
        ["What does my membership include?", "Courses, events and the forum."]
    )
    expect(widget.welcome).to_be_hidden()
    widget.page.get_by_role("button", name="New chat").click()
    expect(widget.welcome).to_be_visible()
    expect(widget.bodies).to_have_count(0)
    expect(widget.input).to_be_focused()


class SocketProxy:
    """The widget's websockets through Playwright (``page.route_web_socket``): each
    connection is forwarded to the real server, and a test may drop one or answer a
    frame itself. ``sent`` holds (connection number, frame) of what the page sent."""

    def __init__(self, page: Page) -> None:
        self.connections: list[WebSocketRoute] = []
        self.servers: list[WebSocketRoute] = []
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.on_page_frame = lambda n, frame, route: False  # True: handled, not forwarded
        self.on_server_frame = lambda n, frame, route: None
        page.route_web_socket(WS_URL, self._connect)

    def _connect(self, route: WebSocketRoute) -> None:
        n = len(self.connections)
        self.connections.append(route)
        server = route.connect_to_server()
        self.servers.append(server)

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            self.sent.append((n, frame))
            if not self.on_page_frame(n, frame, route):
                server.send(message)

        def from_server(message: str | bytes) -> None:
            route.send(message)
            self.on_server_frame(n, json.loads(message), route)

        route.on_message(from_page)
        server.on_message(from_server)

    def drop(self, route: WebSocketRoute) -> None:
        """Cut connection ``route`` at both ends, as a network failure would."""
        self.servers[self.connections.index(route)].close(code=1001, reason="cut by the test")
        route.close(code=1001, reason="cut by the test")

    def messages(self) -> list[tuple[int, dict[str, Any]]]:
        return [(n, frame) for n, frame in self.sent if frame["type"] == "chat.message"]


def test_a_message_sent_as_the_connection_drops_is_delivered_exactly_once(
    widget, member, fake_openai
):
    proxy = SocketProxy(widget.page)

    def drop_the_first_message(n, frame, route) -> bool:
        if n == 0 and frame["type"] == "chat.message":
            proxy.drop(route)  # the server never sees it
            return True
        return False

    proxy.on_page_frame = drop_the_first_message
    fake_openai.stream_reply(["Delivered ", "once."])
    widget.sign_in(member)
    widget.ask("Is this sent twice?")
    expect(widget.body(widget.reply())).to_have_text("Delivered once.")
    expect(widget.input).to_have_value("")
    expect(widget.status).to_have_text("")
    [(first, sent), (second, resent)] = proxy.messages()
    assert (first, second) == (0, 1)
    assert resent == sent  # the same frame, the same client_id
    [question] = Message.objects.filter(owner=member.user, role="user")
    assert (question.content, question.client_id) == ("Is this sent twice?", sent["client_id"])
    assert Message.objects.filter(owner=member.user, role="assistant").count() == 1
    expect(widget.bodies).to_have_count(2)


def test_a_reply_cut_off_by_a_drop_is_fetched_again_and_shown_whole(widget, member, fake_openai):
    proxy = SocketProxy(widget.page)
    deltas: list[str] = []

    def drop_after_three_deltas(n, frame, route) -> None:
        if n == 0 and frame["type"] == "chat.delta":
            deltas.append(frame["text"])
            if len(deltas) == 3:
                proxy.drop(route)

    proxy.on_server_frame = drop_after_three_deltas
    parts = [f"part{i} " for i in range(20)]
    fake_openai.stream_reply(parts, delay_s=0.05)
    widget.sign_in(member)
    widget.ask("Tell me twenty things.")
    reply = widget.reply()
    expect(reply.locator(".mpai-actions")).to_be_visible()
    expect(widget.body(reply)).to_have_text("".join(parts).strip())
    [(_, sent), (_, resent)] = proxy.messages()
    assert resent["client_id"] == sent["client_id"]
    [saved] = Message.objects.filter(owner=member.user, role="assistant")
    assert saved.content == "".join(parts)
    expect(reply).to_have_attribute("data-message", str(saved.pk))
    assert Message.objects.filter(owner=member.user, role="user").count() == 1
    expect(widget.bodies).to_have_count(2)
    assert len(fake_openai.requests) == 1  # answered once, replayed to the new socket


def test_rate_limited_counts_down_then_lets_the_member_send_again(widget, member, fake_openai):
    proxy = SocketProxy(widget.page)

    def refuse_the_first(n, frame, route) -> bool:
        if frame["type"] == "chat.message" and len(proxy.messages()) == 1:
            error = {
                "type": "chat.error",
                "code": "rate_limited",
                "detail": "Slow down.",
                "retry_after": 2.4,
            }
            route.send(json.dumps(error))
            return True
        return False

    proxy.on_page_frame = refuse_the_first
    widget.sign_in(member)
    widget.ask("Quick question")
    note = widget.questions.last.locator(".mpai-note")
    expect(note).to_have_text(
        "Not sent. You're sending messages quickly. You can send another message in 3 s."
    )
    expect(widget.input).to_have_value("Quick question")  # the text is kept
    expect(widget.send).to_be_disabled()
    expect(note).to_contain_text("in 2 s.")  # counting down each second
    expect(note).to_contain_text("in 1 s.")
    expect(note).to_contain_text("You can send a message again now.")
    expect(widget.send).to_be_enabled()
    fake_openai.stream_reply(["Now ", "it went."])
    widget.send.click()
    expect(widget.body(widget.reply())).to_have_text("Now it went.")
    expect(widget.input).to_have_value("")
    assert Message.objects.filter(owner=member.user, role="user").count() == 1


def test_the_provider_down_is_said_in_words_with_a_retry(widget, member, fake_openai):
    proxy = SocketProxy(widget.page)

    def unavailable_first(n, frame, route) -> bool:
        if frame["type"] == "chat.message" and len(proxy.messages()) == 1:
            error = {"type": "chat.error", "code": "provider_unavailable", "detail": "503"}
            route.send(json.dumps(error))
            return True
        return False

    proxy.on_page_frame = unavailable_first
    widget.sign_in(member)
    widget.ask("Are you there?")
    note = widget.questions.last.locator(".mpai-note")
    expect(note).to_contain_text("The assistant is unavailable right now. Try again in a moment.")
    expect(widget.input).to_have_value("Are you there?")
    fake_openai.stream_reply(["Yes, ", "back again."])
    note.get_by_role("button", name="Retry").click()
    expect(widget.bodies).to_have_text(["Are you there?", "Yes, back again."])
    expect(widget.input).to_have_value("")
    assert [m.content for m in Message.objects.filter(owner=member.user, role="user")] == [
        "Are you there?"
    ]


def test_a_tool_call_shows_a_status_line_until_the_reply_ends(widget, member, fake_openai):
    proxy = SocketProxy(widget.page)

    def tool_after_start(n, frame, route) -> None:
        if frame["type"] == "chat.started":
            tool = {
                "type": "chat.tool",
                "name": "get_my_memberships",
                "call_id": "c1",
                "status": "started",
            }
            route.send(json.dumps(tool))

    proxy.on_server_frame = tool_after_start
    fake_openai.stream_reply(["You ", "are ", "on ", "the ", "monthly ", "plan."] * 5, delay_s=0.05)
    widget.sign_in(member)
    widget.ask("Which plan am I on?")
    line = widget.reply().locator(".mpai-tool-line")
    expect(line).to_have_text("Looking up your membership…")
    expect(widget.reply().locator(".mpai-actions")).to_be_visible()
    expect(line).to_have_count(0)


MODULE_CHECKS = """async () => {
  const socket = await import("/static/mpai/chat/socket.js");
  const errors = await import("/static/mpai/chat/errors.js");
  const delays = [];
  for (let attempt = 0; attempt < 12; attempt++) {
    const runs = Array.from({length: 50}, () => socket.retryDelay(attempt));
    delays.push([Math.min(...runs), Math.max(...runs)]);
  }
  const explain = (frame) => errors.explainError(frame);
  return {
    delays,
    waits: [5, 75, 4000].map(errors.formatWait),
    quota: explain({code: "quota_exceeded", retry_after: 3600.2}),
    overloadedWithoutWait: explain({code: "overloaded"}),
    unknown: explain({code: "something_new"}),
    timeout: explain({code: "provider_timeout"}).text,
    tool: [errors.toolLine({name: "get_my_memberships", status: "started"}),
           errors.toolLine({name: "whatever", status: "started"})],
  };
}"""


def test_backoff_and_error_words_of_the_modules(widget, member):
    widget.sign_in(member)
    checks = widget.page.evaluate(MODULE_CHECKS)
    # Reconnects back off exponentially, with jitter, from 1 s to at most 30 s.
    lows = [low for low, _ in checks["delays"]]
    highs = [high for _, high in checks["delays"]]
    assert min(lows) >= 1000
    assert max(highs) <= 30000
    assert highs[0] <= 1200
    assert lows[1] >= 1600
    assert highs[1] <= 2400
    assert lows[-1] >= 24000  # capped, still jittered
    assert lows[-1] < highs[-1]
    assert checks["waits"] == ["5 s", "1 min 15 s", "1 h 6 min"]
    assert checks["quota"] == {
        "text": "You've reached your message allowance for now.",
        "action": "wait",
        "retryAfter": 3601,
    }
    assert checks["overloadedWithoutWait"]["action"] == "retry"
    assert checks["unknown"]["action"] == "retry"
    assert checks["timeout"] == "The assistant is unavailable right now. Try again in a moment."
    assert checks["tool"] == ["Looking up your membership…", "Working…"]
