"""Signals of the cache package (to move to ``mpai/signals.py``).

``membership_changed``
    Send it when a user's membership changes (a subscription starts, lapses, changes
    plan) so the cached user context is rebuilt: the seed invalidated it on
    MemberPress's ``mepr-event-transaction-completed``. Arguments: ``sender`` (the
    class or module sending it) and ``user`` (a user instance, or its primary key).
    Example::

        from mpai.cache.signals import membership_changed
        membership_changed.send(sender=Subscription, user=subscription.user)
"""

from __future__ import annotations

from django.dispatch import Signal

# Keyword arguments: user (a user instance or its primary key).
membership_changed = Signal()
