"""The demo's account pages in headless Chromium: sign in, wrong password, sign out, and
a whole password reset over a real SMTP server.

Same stack as test_chat_page.py (its ``browser`` and ``member`` fixtures): the demo in a
real uvicorn process with DEBUG off (so django-csp sends its header; every page is
checked for Content-Security-Policy violations), plus an aiosmtpd server on a free port
that the demo reaches through ``EMAIL_HOST`` / ``EMAIL_PORT``. Every wait has a deadline;
nothing sleeps. The sign-in page is also saved as screenshots at 1280 and 390 px in
``/tmp/mpai-screenshots/``.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from playwright.sync_api import Browser, Page, expect

from tests.asgi_server import AsgiServer, server_env
from tests.browser import test_chat_page as chat_page
from tests.health.test_notifications import Collector
from tests.redis_server import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# The fixtures of the chat page's tests, by assignment (pytest finds them here).
browser = chat_page.browser
member = chat_page.member

SCREENSHOTS = Path("/tmp/mpai-screenshots")
FROM_EMAIL = "Members' Club <club@example.org>"
WRONG_CREDENTIALS = "Please enter a correct username and password."
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""
# WCAG 2 contrast of each visible text element against the first opaque background
# behind it: [[description, ratio], ...].
TEXT_CONTRASTS = """() => {
  const rgb = (value) => value.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const channel = (c) => {
      c /= 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  };
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const color = rgb(getComputedStyle(e).backgroundColor);
      if (color.length < 4 || color[3] === 1) return color;
    }
    return [255, 255, 255];
  };
  const texts = [...document.querySelectorAll("body *")].filter((e) =>
    [...e.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim())
    && e.getClientRects().length && e.tagName !== "SCRIPT");
  return texts.map((e) => {
    const [fg, bg] = [luminance(rgb(getComputedStyle(e).color)), luminance(background(e))];
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    return [`${e.tagName.toLowerCase()} "${e.textContent.trim().slice(0, 30)}"`, ratio];
  });
}"""


@pytest.fixture(scope="module")
def smtp() -> Iterator[Collector]:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it receives."""
    collector = Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=free_port())
    controller.start()
    collector.port = controller.port  # type: ignore[attr-defined]
    try:
        yield collector
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def auth_server(
    django_db_setup, redis_server, fake_openai_url, smtp: Collector
) -> Iterator[AsgiServer]:
    """The demo in uvicorn, sending its email to ``smtp``."""
    env = {
        **server_env(redis_server.url, fake_openai_url),
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOW_ASYNC_UNSAFE": "",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp.port),  # type: ignore[attr-defined]
        "DEFAULT_FROM_EMAIL": FROM_EMAIL,
    }
    server = AsgiServer(env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def site(browser: Browser, auth_server: AsgiServer, request) -> Iterator[chat_page.ChatPage]:
    """A fresh browser context on the demo; the test fails on any page error or
    Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    context.set_default_timeout(chat_page.DEADLINE_MS)
    context.add_init_script(RECORD_VIOLATIONS)
    site = chat_page.ChatPage(context.new_page(), auth_server)
    failed_before = request.session.testsfailed
    try:
        yield site
        # Chromium logs each violation on the console (kept across pages); the last
        # page's events are in window.cspViolations too.
        problems = [
            *site.errors,
            *site.page.evaluate("window.cspViolations || []"),
            *(line for line in site.console if "Content Security Policy" in line),
        ]
        if problems:
            stem = site.save_artifacts(request.node.name)
            pytest.fail(f"page errors or CSP violations: {problems} (see {stem}.*)")
        if request.session.testsfailed > failed_before:
            print(f"browser artifacts: {site.save_artifacts(request.node.name)}.*")
    finally:
        context.close()


def sign_in_form(page: Page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def snap(page: Page, name: str) -> None:
    """A screenshot of the whole page, to look at: /tmp/mpai-screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def received_for(smtp: Collector, address: str) -> EmailMessage:
    envelope = wait_until(
        lambda: next((e for e in smtp.envelopes if address in e.rcpt_tos), None),
        timeout=chat_page.DEADLINE_MS / 1000,
        what=f"an email to {address}",
    )
    return email.message_from_bytes(envelope.content, policy=email.policy.default)


def test_sign_in_through_the_page_lands_on_the_chat(site, member):
    response = site.page.goto(f"{site.server.http_url}/accounts/login/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(site.page).to_have_title("Sign in · Members' Club")
    expect(site.page.get_by_role("link", name="Forgot your password?")).to_be_visible()
    site.sign_in(member)  # from / via ?next=/ to the connected chat on the home page


def test_a_wrong_password_is_explained_on_the_page(site, member):
    sign_in_form(site.page, site.server.http_url, member.username, "not my password")
    expect(site.page).to_have_url(f"{site.server.http_url}/accounts/login/")
    expect(site.page.get_by_role("alert")).to_contain_text(WRONG_CREDENTIALS)
    expect(site.page.get_by_label("Username")).to_have_value(member.username)
    expect(site.page.get_by_label("Password")).to_have_value("")
    # Then the right one works.
    site.page.get_by_label("Password").fill(member.password)
    site.page.get_by_role("button", name="Sign in").click()
    expect(site.page).to_have_url(f"{site.server.http_url}/")


def test_sign_out_shows_the_signed_out_page(site, member):
    site.sign_in(member)
    site.page.get_by_role("button", name="Sign out").click()
    expect(site.page).to_have_url(f"{site.server.http_url}/accounts/logout/")
    expect(site.page.get_by_role("heading", level=1)).to_have_text("You have been signed out")
    expect(site.page).to_have_title("Signed out · Members' Club")
    snap(site.page, "signed-out")
    site.page.get_by_role("link", name="Sign in again").click()
    expect(site.page).to_have_url(f"{site.server.http_url}/accounts/login/")
    # Really signed out: the chat sends back to the sign-in page.
    site.page.goto(f"{site.server.http_url}/mpai/chat/")
    expect(site.page).to_have_url(re.compile(r"/accounts/login/\?next=/mpai/chat/$"))


def test_password_reset_by_email_over_smtp(site, member, smtp):
    address = f"{member.username}@example.org"
    member.user.email = address
    member.user.save(update_fields=["email"])
    page, base = site.page, site.server.http_url
    page.set_viewport_size({"width": 390, "height": 844})  # on a phone

    page.goto(f"{base}/accounts/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Reset your password")
    snap(page, "reset-1-form")
    page.get_by_label("Email").fill(address)
    page.get_by_role("button", name="Email me a reset link").click()
    expect(page).to_have_url(f"{base}/accounts/password_reset/done/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your email")
    snap(page, "reset-2-check-email")

    message = received_for(smtp, address)
    assert message["Subject"] == "Reset your Members' Club password"
    assert message["From"] == FROM_EMAIL
    assert message["To"] == address
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert f"Hello {member.username}," in body
    links = re.findall(rf"{re.escape(base)}/accounts/reset/[\w-]+/[\w-]+/", body)
    assert len(links) == 1, body

    page.goto(links[0])
    # Django moves the token into the session and drops it from the address.
    expect(page).to_have_url(re.compile(r"/accounts/reset/[\w-]+/set-password/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Choose a new password")
    new_password = "a brand new long passphrase 42"
    page.get_by_label("New password", exact=True).fill(new_password)
    page.get_by_label("New password confirmation").fill(new_password + " typo")
    page.get_by_role("button", name="Set my password").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.locator(".field-errors")).to_contain_text("didn’t match")
    snap(page, "reset-3-mismatch")

    page.get_by_label("New password", exact=True).fill(new_password)
    page.get_by_label("New password confirmation").fill(new_password)
    page.get_by_role("button", name="Set my password").click()
    expect(page).to_have_url(f"{base}/accounts/reset/done/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Your password has been changed")
    snap(page, "reset-4-complete")

    page.get_by_role("link", name="Sign in with your new password").click()
    page.get_by_label("Username").fill(member.username)
    page.get_by_label("Password").fill(member.password)  # the old one no longer works
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text(WRONG_CREDENTIALS)
    page.get_by_label("Password").fill(new_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/")
    site.wait_connected()

    # The link worked once.
    page.goto(links[0])
    expect(page.get_by_role("heading", level=1)).to_have_text("This reset link can't be used")
    expect(page.get_by_role("alert")).to_contain_text("invalid or has expired")
    snap(page, "reset-5-used-link")
    expect(page.get_by_role("link", name="Ask for a new link")).to_have_attribute(
        "href", "/accounts/password_reset/"
    )


def test_sign_in_page_at_phone_and_desktop_widths(site, member):
    """Screenshots for a look, and what can be checked: no sideways scrolling at 360 px,
    a visible focus ring, text contrast of at least 4.5:1 (the error shown too)."""
    page, base = site.page, site.server.http_url
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{base}/accounts/login/")
        expect(page.get_by_label("Username")).to_be_focused()  # autofocus
        snap(page, f"signin-{width}")

    page.set_viewport_size({"width": 360, "height": 740})
    sign_in_form(page, base, member.username, "wrong")
    expect(page.get_by_role("alert")).to_contain_text(WRONG_CREDENTIALS)
    snap(page, "signin-error-360")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    low = [(text, round(ratio, 2)) for text, ratio in page.evaluate(TEXT_CONTRASTS) if ratio < 4.5]
    assert low == []

    page.keyboard.press("Tab")  # from the username (focused at load) to the password
    expect(page.get_by_label("Password")).to_be_focused()
    outline = page.get_by_label("Password").evaluate(
        "(e) => [getComputedStyle(e).outlineStyle, parseFloat(getComputedStyle(e).outlineWidth)]"
    )
    assert outline[0] != "none"
    assert outline[1] >= 2
