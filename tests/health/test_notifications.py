"""Alert email (mpai.health.notifications): grouping, repeats, resolved notices,
severities, silences, the veto signal and send failures; through Django's locmem
backend and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.test.utils import override_settings
from django.utils import timezone

from mpai.health import notifications
from mpai.health.models import HealthAlert
from mpai.health.signals import sending_alert_email
from tests.health.test_alerts import RECIPIENTS, mpai_overrides, run
from tests.waiting import wait_until


@pytest.fixture(autouse=True)
def _recipients() -> Iterator[None]:
    with mpai_overrides():
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Collector:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, Collector]]:
    collector = Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, collector
    finally:
        controller.stop()


def fire(*names: str, severity: str = "error") -> None:
    """Two failing runs of each of ``names`` (they fire in the second)."""
    for _ in range(2):
        run(**dict.fromkeys(names, severity))


@pytest.mark.django_db
def test_two_checks_firing_in_one_run_send_one_email(mailoutbox):
    fire("database", "provider")
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.subject == "[mpai] mpai health: 2 alerts firing (database, provider)"
    assert message.to == RECIPIENTS
    assert "Firing (2)" in message.body
    assert "* database [error]: database is error" in message.body
    assert "* provider [error]: provider is error" in message.body
    assert "failing runs: 2" in message.body
    first_seen = HealthAlert.objects.get(check_name="database").first_seen
    assert f"since {first_seen:%Y-%m-%d %H:%M:%S}" in message.body
    assert "Resolved" not in message.body
    assert "Dashboard: /admin/mpai/health/" in message.body
    assert all(a.last_notified_at for a in HealthAlert.objects.all())


@pytest.mark.django_db
def test_nothing_due_sends_nothing(mailoutbox):
    run(database="ok")
    run(database="error")  # pending only
    assert notifications.notify() is None
    fire("cache")
    assert len(mailoutbox) == 1
    run(cache="error")  # still firing, notified just now
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_repeat_interval_repeats_in_the_same_email(mailoutbox):
    with mpai_overrides(alerts={"REPEAT_INTERVAL": 60}):
        fire("database")
        run(database="error", provider="error")
        assert len(mailoutbox) == 1  # not yet due
        HealthAlert.objects.filter(check_name="database").update(
            last_notified_at=timezone.now() - timedelta(seconds=61)
        )
        run(database="error", provider="error")  # provider fires; database repeats
    assert len(mailoutbox) == 2
    message = mailoutbox[1]
    assert message.subject == "[mpai] mpai health: 2 alerts firing (provider, database)"
    assert "* database [error]: database is error (still firing; repeated every" in message.body
    assert "failing runs: 4" in message.body
    database = HealthAlert.objects.get(check_name="database")
    assert timezone.now() - database.last_notified_at < timedelta(seconds=30)


@pytest.mark.django_db
def test_recovery_sends_resolved_notice(mailoutbox):
    fire("database", "cache")
    run(cache="error")
    assert len(mailoutbox) == 2
    message = mailoutbox[1]
    assert message.subject == "[mpai] mpai health: 1 alert resolved (database)"
    assert "Resolved (1)" in message.body
    assert "Firing" not in message.body
    assert "* database [error] is passing again (was: database is error)" in message.body
    alert = HealthAlert.objects.get(check_name="database")
    assert alert.resolved_notified
    assert f"to {alert.resolved_at:%Y-%m-%d %H:%M:%S}" in message.body
    run(cache="error")
    assert len(mailoutbox) == 2  # sent once


@pytest.mark.django_db
def test_firing_and_resolved_in_one_email(mailoutbox):
    fire("database")
    run(provider="error")
    run(provider="error")  # database resolved a run ago; provider fires
    assert [m.subject for m in mailoutbox][1:] == [
        "[mpai] mpai health: 1 alert resolved (database)",
        "[mpai] mpai health: 1 alert firing (provider)",
    ]
    run(provider="error", cache="error")  # cache pending
    run(cache="error")
    # cache fires while provider resolves: one email with both sections.
    assert mailoutbox[-1].subject == (
        "[mpai] mpai health: 1 alert firing (cache), 1 resolved (provider)"
    )
    assert len(mailoutbox) == 4
    body = mailoutbox[-1].body
    assert body.index("Firing (1)") < body.index("Resolved (1)")


@pytest.mark.django_db
def test_send_resolved_off(mailoutbox):
    with mpai_overrides(alerts={"SEND_RESOLVED": False}):
        fire("database")
        run(database="ok")
    assert len(mailoutbox) == 1
    assert not HealthAlert.objects.get().resolved_notified


@pytest.mark.django_db
def test_warnings_not_emailed_by_default(mailoutbox):
    fire("disk", severity="warning")
    assert HealthAlert.objects.get().state == "firing"
    run(disk="ok")  # resolved, but its firing was never notified: no resolved notice
    assert mailoutbox == []


@pytest.mark.django_db
def test_warnings_emailed_with_min_severity_warning(mailoutbox):
    with mpai_overrides(alerts={"MIN_SEVERITY": "warning"}):
        run(disk="warning", database="error")
        run(disk="warning", database="error")
    assert len(mailoutbox) == 1
    assert mailoutbox[0].subject == "[mpai] mpai health: 2 alerts firing (database, disk)"
    assert "* disk [warning]: disk is warning" in mailoutbox[0].body


@pytest.mark.django_db
def test_email_disabled_then_enabled(mailoutbox):
    with mpai_overrides(alerts={"EMAIL_ENABLED": False}):
        fire("database")
    assert mailoutbox == []
    assert HealthAlert.objects.get().last_notified_at is None
    run(database="error")
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_veto_signal_stops_the_email_and_may_edit_it(mailoutbox):
    seen: list[dict[str, Any]] = []

    def veto(sender: Any, **kwargs: Any) -> bool:
        seen.append(kwargs)
        return False

    sending_alert_email.connect(veto)
    try:
        fire("database")
    finally:
        sending_alert_email.disconnect(veto)
    assert mailoutbox == []
    assert [a.check_name for a in seen[0]["firing"]] == ["database"]
    assert seen[0]["resolved"] == []
    assert "database" in seen[0]["message"].subject
    # A vetoed notice counts as handled: it is not offered again before a repeat.
    assert HealthAlert.objects.get().last_notified_at is not None

    def edit(sender: Any, message: Any, **kwargs: Any) -> None:
        message.subject = "edited"
        message.to = ["other@example.com"]

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    sending_alert_email.connect(edit)
    sending_alert_email.connect(broken)
    try:
        run(database="ok")
    finally:
        sending_alert_email.disconnect(edit)
        sending_alert_email.disconnect(broken)
    assert [(m.subject, m.to) for m in mailoutbox] == [("edited", ["other@example.com"])]


@pytest.mark.django_db
def test_send_failure_is_logged_and_retried(mailoutbox, caplog):
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=free_port(),  # nothing listens there
        EMAIL_TIMEOUT=2,
    ):
        changes = fire_and_changes("database")
    assert [c.new_state for c in changes] == ["firing"]
    failures = [r for r in caplog.records if r.name == "mpai.health" and r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "retried on the next run" in failures[0].getMessage()
    alert = HealthAlert.objects.get()
    assert alert.state == "firing"
    assert alert.last_notified_at is None

    run(database="error")  # the backend works again (locmem)
    assert len(mailoutbox) == 1
    assert "1 alert firing (database)" in mailoutbox[0].subject
    alert.refresh_from_db()
    assert alert.last_notified_at is not None


def fire_and_changes(name: str) -> list[Any]:
    run(**{name: "error"})
    return run(**{name: "error"})


@pytest.mark.django_db
def test_real_smtp_server(smtp_server):
    controller, collector = smtp_server
    with (
        override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=controller.port,
            SERVER_EMAIL="mpai@example.com",
        ),
        mpai_overrides(
            alerts={"SITE_NAME": "example.com", "DASHBOARD_URL": "https://example.com/h/"}
        ),
    ):
        fire("database", "provider")
    wait_until(lambda: collector.envelopes, what="the SMTP server received the email")
    assert len(collector.envelopes) == 1
    envelope = collector.envelopes[0]
    assert envelope.mail_from == "mpai@example.com"
    assert envelope.rcpt_tos == RECIPIENTS
    parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert parsed["Subject"] == "[example.com] mpai health: 2 alerts firing (database, provider)"
    assert parsed["To"] == ", ".join(RECIPIENTS)
    body = parsed.get_body(preferencelist=("plain",)).get_content()
    assert body.startswith("mpai health on example.com: check run of ")
    assert "* database [error]: database is error" in body
    assert "* provider [error]: provider is error" in body
    assert "Dashboard: https://example.com/h/" in body


@pytest.mark.django_db
def test_recipients_default_to_admins(mailoutbox, caplog):
    with (
        mpai_overrides(ALERT_RECIPIENTS=None),
        override_settings(ADMINS=[("Ops", "ops@example.org"), "root@example.org"]),
    ):
        assert notifications.recipients() == ["ops@example.org", "root@example.org"]
        fire("database")
    assert mailoutbox[0].to == ["ops@example.org", "root@example.org"]

    with mpai_overrides(ALERT_RECIPIENTS=None), override_settings(ADMINS=[]):
        fire("cache")
    assert len(mailoutbox) == 1
    assert "no one to email" in caplog.text
    assert HealthAlert.objects.get(check_name="cache").last_notified_at is None


@pytest.mark.django_db
def test_site_name_and_dashboard_url():
    assert notifications.site_name() == "mpai"
    assert notifications.dashboard_url().endswith("/admin/mpai/health/")
    with mpai_overrides(alerts={"SITE_NAME": "members.example"}):
        assert notifications.site_name() == "members.example"
    with override_settings(MPAI_SITE_URL="https://members.example/"):
        assert notifications.dashboard_url() == "https://members.example/admin/mpai/health/"
    with mpai_overrides(alerts={"DASHBOARD_URL": "https://x.example/d/"}):
        assert notifications.dashboard_url() == "https://x.example/d/"


@pytest.mark.django_db
def test_subject_lists_a_few_names():
    names = ["a1", "a2", "a3", "a4", "a5", "a6"]
    fire(*names)
    subject = mail.outbox[0].subject
    assert subject == "[mpai] mpai health: 6 alerts firing (a1, a2, a3, a4, +2 more)"


@pytest.mark.django_db
def test_invalid_min_severity_is_logged_not_raised(mailoutbox, caplog):
    with mpai_overrides(alerts={"MIN_SEVERITY": "critical"}):
        with pytest.raises(ImproperlyConfigured, match="MIN_SEVERITY"):
            notifications.notify()
        changes = fire_and_changes("database")  # process_snapshot never raises for it
    assert [c.new_state for c in changes] == ["firing"]
    assert mailoutbox == []
    assert "notification failed" in caplog.text
