"""Default context sections: user info, current page, site data, system info.

A section provider is a callable ``provider(request: ContextRequest) -> str | None``
(None or "" = no section). A provider may have an ``applies(query: str) -> bool``
attribute: it is then called only when the query needs it (lazy loading
of membership data). Sites replace or add providers in ``MPAI["CONTEXT_SECTIONS"]``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from mpai.conf import mpai_settings

if TYPE_CHECKING:
    from mpai.chat.context import ContextRequest


def user_info(request: ContextRequest) -> str:
    """Who the user is (cached 5 minutes in the ``user_context`` cache group)."""
    from mpai.chat.profile import get_user_profile

    data = get_user_profile(request.user)
    return "\n".join(f"{key}: {value}" for key, value in data.items() if value not in ("", None))


def current_page(request: ContextRequest) -> str | None:
    """The page the user is on, from the ``page`` field of ``chat.message``."""
    page = request.page or {}
    parts = [f"{key}: {page[key]}" for key in ("title", "url") if isinstance(page.get(key), str)]
    return "\n".join(parts) or None


class SiteData:
    """Membership data: the user's groups, loaded only for membership questions.

    ``applies`` matches ``MPAI["SITE_DATA_KEYWORDS"]`` (a regular expression) against
    the query: membership data is loaded only when the query mentions it.
    """

    def applies(self, query: str) -> bool:
        return re.search(mpai_settings.SITE_DATA_KEYWORDS, query, re.IGNORECASE) is not None

    def __call__(self, request: ContextRequest) -> str | None:
        groups = list(request.user.groups.values_list("name", flat=True))
        return "memberships: " + (", ".join(groups) if groups else "none")


site_data = SiteData()


def system_info(request: ContextRequest) -> str:
    """The site's name and today's date (UTC)."""
    return f"site: {mpai_settings.SITE_NAME}\ndate: {timezone.now().date().isoformat()}"


def render(name: str, text: Any) -> str:
    """Render a section for the system message: a heading and its text."""
    return f"## {name.replace('_', ' ').capitalize()}\n{text}"
