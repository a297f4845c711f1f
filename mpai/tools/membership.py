"""Membership tools over the site's own membership system, through an adapter.

mpai knows no membership plugin: a site implements :class:`MembershipAdapter` over
its own models and names it in ``MPAI["MEMBERSHIP_ADAPTER"]`` (an import string of
the class, or an instance; default :class:`NullMembershipAdapter`, which knows no
memberships, plans or articles). The built-in tools call it::

    MPAI = {
        "MEMBERSHIP_ADAPTER": "mysite.assistant.SiteMembershipAdapter",
        "TOOLS": [
            "mpai.tools.membership.get_my_memberships",
            "mpai.tools.membership.list_plans",
            "mpai.tools.membership.search_help_articles",
        ],
    }

The adapter's dicts are the tools' results, so keep them small and JSON-friendly
(dates, datetimes and Decimals are encoded by ``DjangoJSONEncoder``). The suggested
keys:

- a membership: ``plan``, ``status`` (e.g. ``"active"``, ``"paused"``,
  ``"cancelled"``), ``renews_at`` or ``expires_at`` (a date, or None), ``price``;
- a plan: ``name``, ``price``, ``period`` or ``period_months``, ``benefits``;
- an article: ``title``, ``url`` (or None), ``excerpt``.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from mpai.conf import mpai_settings
from mpai.tools.base import tool

__all__ = [
    "MembershipAdapter",
    "NullMembershipAdapter",
    "get_membership_adapter",
    "get_my_memberships",
    "list_plans",
    "search_help_articles",
]

#: The most help articles one search returns.
MAX_ARTICLES = 10


class MembershipAdapter:
    """What a site implements to show its memberships to the assistant.

    Each method returns a list of dicts (see the module docstring); it is called in a
    tool's worker thread, so it may use the ORM (the runner closes the thread's
    database connections afterwards). Raise :class:`~mpai.tools.base.ToolError` for
    an error the model should see.
    """

    def memberships(self, user: Any) -> list[dict[str, Any]]:
        """The memberships of ``user`` (the signed-in user), current ones first."""
        raise NotImplementedError

    def plans(self) -> list[dict[str, Any]]:
        """The plans on offer, in the order the site presents them."""
        raise NotImplementedError

    def search_articles(self, query: str, limit: int = 3) -> list[dict[str, Any]]:
        """At most ``limit`` help articles matching ``query``, best first."""
        raise NotImplementedError

    def plan_for(self, user: Any) -> str | None:
        """The name of the plan ``user`` holds, for quotas (``MPAI["QUOTAS"]`` keys), or
        None when they hold none. Called on every chat message (mpai.usage.quotas), so
        keep it cheap. The default: None."""
        return None


class NullMembershipAdapter(MembershipAdapter):
    """The default adapter: no memberships, no plans, no articles."""

    def memberships(self, user: Any) -> list[dict[str, Any]]:
        return []

    def plans(self) -> list[dict[str, Any]]:
        return []

    def search_articles(self, query: str, limit: int = 3) -> list[dict[str, Any]]:
        return []


_adapter_lock = threading.Lock()
_adapter: tuple[Any, MembershipAdapter] | None = None


def get_membership_adapter() -> MembershipAdapter:
    """The adapter ``MPAI["MEMBERSHIP_ADAPTER"]`` names: one instance per configured class.

    Raises:
        ImproperlyConfigured: the import string cannot be imported.
    """
    global _adapter
    configured = mpai_settings.MEMBERSHIP_ADAPTER
    if not isinstance(configured, type):
        return configured
    with _adapter_lock:
        if _adapter is None or _adapter[0] is not configured:
            _adapter = (configured, configured())
        return _adapter[1]


def _signed_in(user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False))


@tool(permission=_signed_in)
def get_my_memberships(user: Any) -> dict[str, Any]:
    """The signed-in user's own memberships: plan, status, renewal or expiry date, price.

    Use it for questions about the user's plan, billing dates or what they have access to.
    """
    return {"memberships": get_membership_adapter().memberships(user)}


@tool
def list_plans(user: Any) -> dict[str, Any]:
    """The membership plans on offer: name, price, billing period and benefits.

    Use it to compare plans or answer questions about prices and upgrades.
    """
    return {"plans": get_membership_adapter().plans()}


@tool
def search_help_articles(
    user: Any,
    query: str,
    limit: Annotated[int, {"minimum": 1, "maximum": MAX_ARTICLES}] = 3,
) -> dict[str, Any]:
    """Search the site's help centre; returns the best matching articles (title, url, excerpt).

    Use it for how-to questions (cancelling, refunds, payment methods, access problems).

    Args:
        query: a few keywords of the user's question.
        limit: the most articles returned.
    """
    return {"articles": get_membership_adapter().search_articles(query, limit=limit)[:limit]}
