"""Template tags of mpai's pages: ``{% load mpai_tags %}``.

mpai's templates reverse only mpai's own URL names; URLs that belong to the host site
come from settings through these tags, so a site without, say, a URL named ``logout``
still gets a working chat page.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.middleware.csrf import get_token
from django.shortcuts import resolve_url
from django.urls import NoReverseMatch, reverse

from mpai.conf import mpai_settings

register = template.Library()


@register.simple_tag
def mpai_logout_url() -> str:
    """Return the URL the Sign-out button posts to, or ``""`` for no button.

    ``MPAI["LOGOUT_URL"]`` (a path or a URL name) when set; otherwise the site's URL
    named ``logout`` if it has one, else ``""``. Use as
    ``{% mpai_logout_url as logout_url %}``.

    Raises:
        ImproperlyConfigured: ``MPAI["LOGOUT_URL"]`` is a URL name the site lacks.
    """
    configured = mpai_settings.LOGOUT_URL
    if configured:
        try:
            return str(resolve_url(configured))
        except NoReverseMatch as exc:
            raise ImproperlyConfigured(
                f'MPAI["LOGOUT_URL"] = {configured!r} is neither a path nor a URL name '
                "of this site."
            ) from exc
    try:
        return reverse("logout")
    except NoReverseMatch:
        return ""


# Ids in the URL templates of the widget's config: reversed with this id, which the
# script replaces by the real one (an id no database row will have in practice).
URL_ID_PLACEHOLDER = 2147483647


def _url_template(name: str) -> str:
    return reverse(name, args=[URL_ID_PLACEHOLDER])


@register.inclusion_tag("mpai/widget.html", takes_context=True)
def mpai_chat(context: template.Context) -> dict[str, Any]:
    """Render the whole chat widget: ``{% load mpai_tags %}{% mpai_chat %}``.

    Its ``<link>`` and ``<script>`` tags come with it (mpai's static files, no inline
    code, nothing from another host). The page needs ``django.contrib.staticfiles``,
    mpai's URLs (only mpai's own names are reversed) and a signed-in user; the
    websocket is ``/ws/mpai/chat/`` on the page's host. The script reads its config
    from ``data-`` attributes of ``#mpai-chat``: the API's URLs (``…-template`` ones
    hold the id ``URL_ID_PLACEHOLDER``), ``MPAI["MAX_MESSAGE_LENGTH"]`` and the CSRF
    token of the request (for the API's ``PUT``/``PATCH``/``DELETE``).
    """
    request = context.get("request")
    return {
        "csrf_token_value": get_token(request) if request is not None else "",
        "ws_path": "/ws/mpai/chat/",
        "conversations_url": reverse("mpai:mpai_api:conversations"),
        "conversation_url": _url_template("mpai:mpai_api:conversation"),
        "messages_url": _url_template("mpai:mpai_api:conversation-messages"),
        "feedback_url": _url_template("mpai:mpai_api:message-feedback"),
        "search_url": reverse("mpai:mpai_api:search"),
        "url_id_placeholder": URL_ID_PLACEHOLDER,
        "max_length": int(mpai_settings.MAX_MESSAGE_LENGTH),
    }
