"""The demo's membership site: its plans, its help centre, and which plan a user holds.

Demo data only, written for this project: a real site reads these from its own
models. The assistant sees them through the context sections in ``config/context.py``.

Which plan a user holds: :data:`PLAN_BY_USERNAME` maps a username to a plan name;
any other user (``make run``'s ``demo`` user too) holds :data:`DEFAULT_PLAN`,
"Monthly", so the demo can be asked how to upgrade to the annual plan.
"""

from __future__ import annotations

import calendar
import datetime
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Plan:
    """A membership plan.

    Attributes:
        name: shown to users, e.g. "Annual".
        price: in words, e.g. "$120/year" ("" for a free plan).
        period_months: months between renewals; 0 = never billed.
        benefits: what the plan includes, one short sentence each.
    """

    name: str
    price: str
    period_months: int
    benefits: tuple[str, ...]


@dataclass(frozen=True)
class Article:
    """A help-centre article: a title and a body of a few plain sentences."""

    slug: str
    title: str
    body: str


PLANS: dict[str, Plan] = {
    plan.name: plan
    for plan in (
        Plan(
            "Free",
            "free",
            0,
            (
                "The public articles and the weekly newsletter",
                "Three member-only articles a month",
                "Access to the community forum (read only)",
            ),
        ),
        Plan(
            "Monthly",
            "$12/month",
            1,
            (
                "Every member-only article, video and download",
                "Posting in the community forum",
                "The monthly live Q&A session and its recordings",
                "Cancel or pause at any time",
            ),
        ),
        Plan(
            "Annual",
            "$120/year (two months free compared with Monthly)",
            12,
            (
                "Everything in the Monthly plan",
                "Two months free: $120 a year instead of $144",
                "Early access to new courses",
                "One downloadable course bundle each year",
            ),
        ),
    )
}

#: The plan of users :data:`PLAN_BY_USERNAME` does not name.
DEFAULT_PLAN = "Monthly"

#: Username → plan name, for trying the demo with each plan. Other users hold
#: :data:`DEFAULT_PLAN`.
PLAN_BY_USERNAME: dict[str, str] = {
    "demo": "Monthly",
    "free": "Free",
    "monthly": "Monthly",
    "annual": "Annual",
}

HELP_ARTICLES: tuple[Article, ...] = (
    Article(
        "upgrade-to-annual",
        "Upgrading to the annual plan",
        "Open Account, then Membership, and choose Switch to Annual. "
        "The annual plan costs $120 a year, two months free compared with paying monthly. "
        "You pay the annual price today, less a credit for the unused days of your "
        "current month. "
        "Your member benefits carry on without a break, and your renewal date becomes "
        "one year from today.",
    ),
    Article(
        "cancel",
        "Cancelling your membership",
        "Open Account, then Membership, and choose Cancel membership. "
        "Your membership stays active until the end of the period you have paid for, "
        "and you are not charged again. "
        "After that your account moves to the Free plan, so you keep your profile and "
        "your saved articles. "
        "You can rejoin at any time from the same page.",
    ),
    Article(
        "billing-renewal",
        "Billing dates and renewal",
        "Memberships renew automatically on the same day of the month (Monthly) or of "
        "the year (Annual) as the day you joined. "
        "If you joined on the 29th, 30th or 31st, months without that day renew on "
        "their last day. "
        "We email you a receipt after every payment, and Annual members get a reminder "
        "seven days before renewal. "
        "Your next renewal date is shown under Account, then Membership.",
    ),
    Article(
        "payment-method",
        "Changing your payment method",
        "Open Account, then Billing, and choose Update payment method. "
        "Enter the new card; it is used for your next renewal and the old card is removed. "
        "If a payment fails, we try again after three days and email you each time. "
        "Your membership stays active while we retry.",
    ),
    Article(
        "refunds",
        "Refunds",
        "You can ask for your money back, a full refund, within 14 days of your first "
        "payment or of an annual renewal. "
        "Write to support from Account, then Help, with the date of the payment. "
        "Refunds go back to the card you paid with and take five to ten working days "
        "to appear. "
        "Monthly renewals after the first month are not refunded, but you can cancel "
        "before the next one.",
    ),
    Article(
        "member-content",
        "Accessing member-only content",
        "Sign in, then open any article, video or download marked Members. "
        "If you still see the paywall, sign out and back in so your membership is "
        "picked up. "
        "Downloads are in the Library section of your account, and live Q&A recordings "
        "are under Events. "
        "Free members can open three member-only articles a month.",
    ),
    Article(
        "reset-password",
        "Resetting your password",
        "On the sign-in page, choose Forgot password and enter your email address. "
        "We send a link that works for one hour. "
        "Choose a new password of at least 12 characters; you are then signed in. "
        "If no email arrives, check your spam folder or write to support.",
    ),
    Article(
        "pause",
        "Pausing your membership",
        "Monthly members can pause for one, two or three months from Account, then "
        "Membership, by choosing Pause. "
        "You are not charged while paused, and member-only content is locked until "
        "you return. "
        "Your membership restarts on its own at the end of the pause, and you can "
        "resume early at any time. "
        "Annual memberships cannot be paused.",
    ),
)


def plan_for(user: Any) -> Plan:
    """Return the plan ``user`` holds: :data:`PLAN_BY_USERNAME`, else :data:`DEFAULT_PLAN`."""
    username = getattr(user, "get_username", lambda: "")()
    return PLANS[PLAN_BY_USERNAME.get(username, DEFAULT_PLAN)]


def next_renewal(plan: Plan, joined: datetime.date, today: datetime.date) -> datetime.date | None:
    """Return the first renewal date after ``today`` (None for a plan never billed).

    Renewals fall every ``plan.period_months`` months from ``joined``, on the same day
    of the month, or on the month's last day when it is shorter.
    """
    if plan.period_months <= 0:
        return None
    months = 0
    while True:
        months += plan.period_months
        year, month0 = divmod(joined.month - 1 + months, 12)
        year += joined.year
        day = min(joined.day, calendar.monthrange(year, month0 + 1)[1])
        date = datetime.date(year, month0 + 1, day)
        if date > today:
            return date
