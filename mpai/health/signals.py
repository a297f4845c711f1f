"""Signals of the health alerts, for a site to forward alerts elsewhere (Slack, a pager).

Both are sent with ``sender=HealthAlert`` (:class:`mpai.health.models.HealthAlert`) and
through ``send_robust``: a receiver that raises is logged on the ``mpai.health`` logger
and never breaks the check run nor the email (Django docs, "Signals", ``send_robust``).

Example::

    from django.dispatch import receiver
    from mpai.health.signals import alert_state_changed

    @receiver(alert_state_changed)
    def to_slack(sender, alert, old_state, new_state, **kwargs):
        if new_state in ("firing", "resolved"):
            post_to_slack(f"{alert.check_name} {alert.severity}: {new_state}")
"""

from django.dispatch import Signal

#: Sent once per state change of an alert, after the check run's transaction.
#: Keyword arguments:
#:
#: - ``alert``: the :class:`~mpai.health.models.HealthAlert` (for ``"cleared"``, the
#:   deleted row: its ``pk`` is ``None``);
#: - ``old_state``: ``None`` (a new alert), ``"pending"`` or ``"firing"``;
#: - ``new_state``: ``"pending"`` (a new failing key), ``"firing"`` (it fired),
#:   ``"resolved"`` (a firing alert recovered) or ``"cleared"`` (a pending alert whose
#:   check passed before it fired: deleted, it never fired);
#: - ``snapshot``: the :class:`~mpai.health.models.HealthSnapshot` that changed it.
alert_state_changed = Signal()

#: Sent before the alert email is sent (once per check run with something due). A
#: receiver returning ``False`` (exactly ``False``; ``None`` and other values do not
#: count) vetoes the email: nothing is sent and the alerts in it count as notified
#: (the receiver took them over), so they are offered again only when a repeat is due.
#: Receivers may also change ``message`` in place (recipients, subject, body). The
#: Django equivalent of a WordPress ``mpai_send_email_alerts`` filter. Keyword arguments:
#:
#: - ``message``: the :class:`django.core.mail.EmailMultiAlternatives` about to be sent;
#: - ``firing``: list of firing :class:`~mpai.health.models.HealthAlert` in it (new
#:   and repeated);
#: - ``resolved``: list of resolved :class:`~mpai.health.models.HealthAlert` in it;
#: - ``snapshot``: the :class:`~mpai.health.models.HealthSnapshot` of the run, or ``None``.
sending_alert_email = Signal()
