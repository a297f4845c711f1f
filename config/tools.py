"""The demo's membership adapter: the tools of ``mpai.tools.membership`` over its data.

Enabled in ``config/settings.py`` with ``MPAI["MEMBERSHIP_ADAPTER"]`` =
``"config.tools.DemoMembershipAdapter"`` and the built-in tools in ``MPAI["TOOLS"]``.
A user's plan is :func:`config.membership.plan_for` (by username); help articles are
ranked by :func:`config.context.matching_articles` (BM25), as the context sections do.

Shapes (see ``mpai.tools.membership``):

- membership: ``plan``, ``status`` ("active"), ``price``, ``renews_at`` (a date, None
  for the Free plan), ``member_since`` (a date), ``benefits`` (list of str);
- plan: ``name``, ``price``, ``period_months`` (0 = never billed), ``benefits``;
- article: ``title``, ``url`` (None: the demo has no help pages), ``excerpt`` (the
  whole body: the demo's articles are a few sentences).
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from config.context import matching_articles
from config.membership import PLANS, Plan, next_renewal, plan_for
from mpai.tools.membership import MembershipAdapter


def _plan_dict(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "price": plan.price,
        "period_months": plan.period_months,
        "benefits": list(plan.benefits),
    }


class DemoMembershipAdapter(MembershipAdapter):
    """The demo site's memberships, plans and help centre (``config.membership``)."""

    def memberships(self, user: Any) -> list[dict[str, Any]]:
        if not getattr(user, "is_authenticated", False):
            return []
        plan = plan_for(user)
        today = timezone.now().date()
        joined = user.date_joined.date() if getattr(user, "date_joined", None) else today
        return [
            {
                "plan": plan.name,
                "status": "active",
                "price": plan.price,
                "renews_at": next_renewal(plan, joined, today),
                "member_since": joined,
                "benefits": list(plan.benefits),
            }
        ]

    def plan_for(self, user: Any) -> str | None:
        """The plan's name (``config.membership.plan_for``); None for anonymous users."""
        if not getattr(user, "is_authenticated", False):
            return None
        return plan_for(user).name

    def plans(self) -> list[dict[str, Any]]:
        return [_plan_dict(plan) for plan in PLANS.values()]

    def search_articles(self, query: str, limit: int = 3) -> list[dict[str, Any]]:
        return [
            {"title": article.title, "url": None, "excerpt": article.body}
            for article in matching_articles(query, limit=limit)
        ]
