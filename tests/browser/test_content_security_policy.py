"""The demo's pages work in Chromium under their Content-Security-Policy, with no violation.

The browser reports each blocked load, inline script or style, and connection as a
``securitypolicyviolation`` event (and a console error): the page records both from
its first script on. Same fixtures as test_chat_page.py (the demo in uvicorn, DEBUG
off, so django-csp sends its header).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.asgi_server import AsgiServer
from tests.browser import test_chat_page as chat_page

pytestmark = pytest.mark.django_db(transaction=True)

# The fixtures of the chat page's tests, by assignment (pytest finds them here).
browser = chat_page.browser
chat_server = chat_page.chat_server
member = chat_page.member

RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


@pytest.fixture
def page_with_csp_watch(
    browser: Browser, chat_server: AsgiServer, request
) -> Iterator[chat_page.ChatPage]:
    context = browser.new_context()
    context.set_default_timeout(chat_page.DEADLINE_MS)
    context.add_init_script(RECORD_VIOLATIONS)
    chat = chat_page.ChatPage(context.new_page(), chat_server)
    try:
        yield chat
        if request.session.testsfailed:
            print(f"browser artifacts: {chat.save_artifacts(request.node.name)}.*")
    finally:
        context.close()


def csp_problems(chat: chat_page.ChatPage) -> list[str]:
    seen = chat.page.evaluate("window.cspViolations")
    console = [line for line in chat.console if "Content Security Policy" in line]
    return [*seen, *console, *chat.errors]


INJECT_INLINE_SCRIPT = """() => {
  const script = document.createElement("script");
  script.textContent = "window.injectedRan = true;";
  document.body.append(script);
}"""
STYLESHEET_RULES = """(name) => {
  const link = document.querySelector(`link[rel=stylesheet][href$="${name}"]`);
  return link && link.sheet ? link.sheet.cssRules.length : 0;
}"""


def test_chat_page_works_under_its_csp_without_violations(page_with_csp_watch, member, fake_openai):
    chat = page_with_csp_watch
    with chat.page.expect_response(f"{chat.server.http_url}/") as page_load:
        chat.sign_in(member)
    policy = page_load.value.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert chat.page.evaluate(STYLESHEET_RULES, "chat.css") > 0  # the stylesheet applied

    # Markdown and HTML in a reply: rendered without a blocked load or inline style.
    image = '<img src="https://example.com/pixel.png" style="color: red">'
    fake_openai.stream_reply(["Under ", "the ", "**policy**.", image])
    chat.ask("Does the chat work?")  # over the websocket
    shown = ["Does the chat work?", "Under the policy." + image]  # the HTML as text
    expect(chat.texts).to_have_text(shown)
    chat.page.reload()  # the conversations and messages, fetched from /api/mpai/...
    expect(chat.texts).to_have_text(shown)
    expect(chat.page.locator("#mpai-conversations > li")).to_have_count(1)
    chat.wait_connected()
    expect(chat.texts.nth(1).locator("strong")).to_have_text("policy")
    assert csp_problems(chat) == [], "\n".join(csp_problems(chat))

    # Control: the policy is enforced and the watch sees it (an injected inline script).
    chat.page.evaluate(INJECT_INLINE_SCRIPT)
    chat.page.wait_for_function("window.cspViolations.length > 0")
    assert chat.page.evaluate("window.injectedRan") is None
    assert chat.page.evaluate("window.cspViolations") == ["script-src-elem inline"]


def test_admin_pages_work_under_the_csp_without_violations(page_with_csp_watch, member):
    member.user.is_staff = member.user.is_superuser = True
    member.user.save(update_fields=["is_staff", "is_superuser"])
    chat = page_with_csp_watch
    page = chat.page
    with page.expect_response(f"{chat.server.http_url}/admin/login/?next=/admin/") as login:
        page.goto(f"{chat.server.http_url}/admin/")
    assert "script-src 'self'" in login.value.headers["content-security-policy"]
    page.get_by_label("Username").fill(member.username)
    page.get_by_label("Password").fill(member.password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{chat.server.http_url}/admin/")
    page.goto(f"{chat.server.http_url}/admin/mpai/message/")
    expect(page.locator("#changelist")).to_be_visible()
    assert page.evaluate(STYLESHEET_RULES, "base.css") > 0
    assert csp_problems(chat) == []


def test_api_docs_render_under_the_csp_without_violations(page_with_csp_watch, member):
    chat = page_with_csp_watch
    chat.sign_in(member)
    with chat.page.expect_response(f"{chat.server.http_url}/api/mpai/v1/docs/") as page_load:
        chat.page.goto(f"{chat.server.http_url}/api/mpai/v1/docs/")
    assert page_load.value.status == 200
    assert "script-src 'self'" in page_load.value.headers["content-security-policy"]
    # Swagger UI (served locally) fetched the schema and drew its operations.
    expect(chat.page.locator(".swagger-ui .info .title")).to_contain_text("mpai REST API")
    expect(chat.page.locator(".opblock-summary-path", has_text="/api/mpai/v1/chat/")).to_have_count(
        1
    )
    assert csp_problems(chat) == []
