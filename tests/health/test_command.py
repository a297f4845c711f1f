"""``manage.py mpai_health``: a table or ``--json``, exit 0 healthy, 1 on a warning or
an error (in a subprocess too: the process really exits with that status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from mpai.health.models import HealthSnapshot
from tests.asgi_server import ROOT

pytestmark = pytest.mark.django_db

HEALTHY = ["mpai.health.checks.DatabaseCheck", "tests.health.test_runner.OkCheck"]
WARNING = [*HEALTHY, "tests.health.test_runner.WarnCheck"]
ERROR = [*HEALTHY, "tests.health.test_runner.FailCheck"]


def checks(entries: list[Any]) -> override_settings:
    return override_settings(MPAI={**settings.MPAI, "HEALTH": {"CHECKS": entries}})


@pytest.fixture(autouse=True)
def no_alerts(monkeypatch):
    import types

    module = types.ModuleType("mpai.health.alerts")
    module.process_snapshot = lambda snapshot: []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpai.health.alerts", module)


def test_healthy_prints_a_table_and_exits_0():
    out = StringIO()
    with checks(HEALTHY):
        call_command("mpai_health", stdout=out)  # no SystemExit: status 0
    text = out.getvalue()
    assert "database" in text
    assert "ok_check" in text
    assert "fine" in text
    snapshot = HealthSnapshot.objects.get()
    assert snapshot.trigger == "command"
    assert snapshot.status == "ok"


@pytest.mark.parametrize("entries", [WARNING, ERROR])
def test_a_warning_or_an_error_exits_1(entries):
    out = StringIO()
    with checks(entries), pytest.raises(SystemExit) as exited:
        call_command("mpai_health", stdout=out)
    assert exited.value.code == 1
    assert "warn_check" in out.getvalue() or "fail_check" in out.getvalue()


def test_json_prints_the_snapshot():
    out = StringIO()
    with checks(ERROR), pytest.raises(SystemExit):
        call_command("mpai_health", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["status"] == "error"
    assert data["trigger"] == "command"
    assert data["id"] == HealthSnapshot.objects.get().pk
    assert [r["name"] for r in data["results"]] == ["database", "ok_check", "fail_check"]
    assert data["results"][2] == {
        "name": "fail_check",
        "status": "error",
        "message": "down",
        "duration_ms": data["results"][2]["duration_ms"],
        "details": {},
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("entries", "code"), [(HEALTHY, 0), (ERROR, 1)])
def test_process_exit_status(entries, code, tmp_path):
    from django.db import connection

    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MPAI_TEST_DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD'] or 'postgres'}@"
            f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
    }
    health = {"CHECKS": entries}
    script = (
        "import django, sys; django.setup();"
        "from django.conf import settings; from django.test.utils import override_settings;"
        f"override_settings(MPAI={{**settings.MPAI, 'HEALTH': {health!r}}}).enable();"
        "from django.core.management import call_command;"
        "call_command('mpai_health', '--json')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == code, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["status"] == ("ok" if code == 0 else "error")
