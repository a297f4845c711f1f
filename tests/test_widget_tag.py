"""``{% mpai_chat %}``: the chat widget's markup, config and assets, without a browser.

The widget must need nothing of the site but documented things: mpai's URLs (it
reverses only mpai's own names), ``django.contrib.staticfiles`` and a request. Its
scripts and styles are static files (the demo's Content-Security-Policy forbids inline
code). The browser side is in ``tests/browser/test_widget.py``.
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.template import Context, RequestContext, Template
from django.test import RequestFactory
from django.urls import NoReverseMatch, include, path, reverse

from mpai.templatetags.mpai_tags import URL_ID_PLACEHOLDER

STATIC = Path(__file__).resolve().parent.parent / "mpai" / "static" / "mpai"

# A site with mpai's URLs and nothing else (no "logout", no "login"): see `bare_site`.
urlpatterns = [path("", include("mpai.urls"))]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_code: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append(data)


def render_widget(request=None) -> str:
    template = Template("{% load mpai_tags %}{% mpai_chat %}")
    if request is None:
        return template.render(Context({}))
    return template.render(RequestContext(request, {}))


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def widget_root(tags: Tags) -> dict[str, str | None]:
    [root] = [attrs for tag, attrs in tags.tags if attrs.get("id") == "mpai-chat"]
    return root


@pytest.fixture
def bare_site(settings):
    settings.ROOT_URLCONF = __name__


def test_the_widget_carries_its_config_in_data_attributes(rf: RequestFactory, settings):
    settings.MPAI = {**settings.MPAI, "MAX_MESSAGE_LENGTH": 1234}
    root = widget_root(parse(render_widget(rf.get("/"))))
    assert root["data-ws-path"] == "/ws/mpai/chat/"
    assert root["data-conversations-url"] == reverse("mpai:mpai_api:conversations")
    assert root["data-search-url"] == reverse("mpai:mpai_api:search")
    assert root["data-max-length"] == "1234"
    assert root["data-url-id"] == str(URL_ID_PLACEHOLDER)
    for name, attribute in [
        ("conversation", "data-conversation-url"),
        ("conversation-messages", "data-messages-url"),
        ("message-feedback", "data-feedback-url"),
    ]:
        template = root[attribute]
        assert template is not None
        assert template.count(str(URL_ID_PLACEHOLDER)) == 1
        assert template.replace(str(URL_ID_PLACEHOLDER), "7") == reverse(
            f"mpai:mpai_api:{name}", args=[7]
        )


def test_the_widget_has_the_requests_csrf_token(rf: RequestFactory):
    request = rf.get("/")
    token = widget_root(parse(render_widget(request)))["data-csrf-token"]
    assert token
    assert re.fullmatch(r"[A-Za-z0-9]{64}", token)
    # The same request's {% csrf_token %} carries a token of the same secret.
    assert request.META["CSRF_COOKIE"]


def test_the_widget_renders_without_a_request(bare_site):
    root = widget_root(parse(render_widget()))
    assert root["data-csrf-token"] == ""  # the script then reads the csrftoken cookie


def test_the_widget_needs_only_mpais_url_names(bare_site, rf: RequestFactory):
    with pytest.raises(NoReverseMatch):  # the bare site has no such name
        reverse("logout")
    root = widget_root(parse(render_widget(rf.get("/"))))
    assert root["data-conversations-url"] == "/api/mpai/v1/conversations/"


def test_the_widget_brings_its_assets_as_static_files_and_no_inline_code(rf: RequestFactory):
    html = render_widget(rf.get("/"))
    tags = parse(html)
    assert tags.inline_code == []
    assert "style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    scripts = [attrs["src"] for tag, attrs in tags.tags if tag == "script"]
    assert scripts == [
        "/static/mpai/vendor/marked/marked.umd.js",
        "/static/mpai/vendor/dompurify/purify.min.js",
        "/static/mpai/chat.js",
    ]
    styles = [attrs["href"] for tag, attrs in tags.tags if tag == "link"]
    assert styles == ["/static/mpai/chat.css"]
    for url in [*scripts, *styles]:
        assert (STATIC / url.removeprefix("/static/mpai/")).is_file(), url


def test_the_chat_scripts_import_only_files_that_exist():
    entry = STATIC / "chat.js"
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target in re.findall(r'^import .* from "(\.[^"]+)";$', module.read_text(), re.M):
            imported = (module.parent / target).resolve()
            assert imported.is_file(), f"{module.name} imports {target}"
            todo.append(imported)
    assert len(seen) > 5
    for module in seen:
        assert len(module.read_text().splitlines()) < 400, module.name


def test_the_vendored_libraries_are_pinned_and_licensed():
    readme = (STATIC / "vendor" / "README.md").read_text()
    marked = (STATIC / "vendor" / "marked" / "marked.umd.js").read_text()
    purify = (STATIC / "vendor" / "dompurify" / "purify.min.js").read_text()
    marked_version = re.search(r"marked v(\d+\.\d+\.\d+)", marked)
    purify_version = re.search(r"DOMPurify (\d+\.\d+\.\d+)", purify)
    assert marked_version
    assert purify_version
    assert f"| marked | {marked_version[1]} |" in readme
    assert f"| dompurify | {purify_version[1]} |" in readme
    assert "MIT" in (STATIC / "vendor" / "marked" / "LICENSE").read_text()
    assert "Apache License" in (STATIC / "vendor" / "dompurify" / "LICENSE").read_text()
    assert (STATIC / "vendor" / "dompurify" / "LICENSE-MPL").is_file()
    for name in ("marked/marked.umd.js", "dompurify/purify.min.js"):
        digest = hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest()
        assert f"`{name}`" in readme
        assert f"`{digest}`" in readme, f"{name} differs from the pinned file"


def test_the_chat_page_uses_the_widget(client, user):
    client.force_login(user)
    response = client.get(reverse("mpai:chat"))
    assert response.status_code == 200
    root = widget_root(parse(response.content.decode()))
    assert root["data-ws-path"] == "/ws/mpai/chat/"
    assert root["data-csrf-token"]
