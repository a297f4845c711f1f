"""Template tags of mpai's pages: ``{% load mpai_tags %}``.

mpai's templates reverse only mpai's own URL names; URLs that belong to the host site
come from settings through these tags, so a site without, say, a URL named ``logout``
still gets a working chat page.
"""

from __future__ import annotations

from django import template
from django.core.exceptions import ImproperlyConfigured
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
