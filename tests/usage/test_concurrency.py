"""The usage upserts add up exactly under concurrent writers (threads and processes,
each with its own connection to the real PostgreSQL)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections

from mpai.usage.models import UsageDay
from mpai.usage.store import add_usage
from tests.chat.site_worker import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

DAY = datetime.date(2030, 1, 1)


@pytest.mark.parametrize("statement", ["on_conflict", "update_then_create"])
def test_threads_with_their_own_connections_lose_no_update(user, statement, monkeypatch) -> None:
    from mpai.usage import store

    if statement == "update_then_create":  # the path of databases without ON CONFLICT
        monkeypatch.setattr(store, "_on_conflict_vendor", lambda: False)
    turns, writers = 150, 4
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(turns):
                add_usage(
                    user_id=user.pk,
                    day=DAY,
                    model="model-t",
                    prompt_tokens=10,
                    completion_tokens=index,
                    cost=Decimal("0.0000025"),
                    estimated=index == 0,
                    cached=index == 1,
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    row = UsageDay.objects.get(user=user, day=DAY, model="model-t")
    assert row.requests == turns * writers
    assert row.prompt_tokens == 10 * turns * writers
    assert row.completion_tokens == turns * (0 + 1 + 2 + 3)
    assert row.cost == Decimal("0.0000025") * turns * writers
    assert (row.estimated_requests, row.cached_requests) == (turns, turns)


def _database_url() -> str:
    conf = connection.settings_dict
    return (
        f"postgres://{conf['USER']}:{conf['PASSWORD']}@{conf['HOST'] or '127.0.0.1'}:"
        f"{conf['PORT'] or 5432}/{conf['NAME']}"
    )


def test_two_processes_lose_no_update(user) -> None:
    assert connection.vendor == "postgresql"  # the suite runs on PostgreSQL, never skipped
    turns = 300
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MPAI_TEST_DATABASE_URL": _database_url(),
        "PYTHONPATH": str(ROOT),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.usage.upsert_worker", str(user.pk), str(turns)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", worker.stderr
        for worker in workers:  # both start at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            _, stderr = worker.communicate(timeout=120)
            assert worker.returncode == 0, stderr
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    row = UsageDay.objects.get(user=user, day=DAY, model="model-c")
    assert row.requests == 2 * turns
    assert (row.prompt_tokens, row.completion_tokens) == (3 * 2 * turns, 2 * 2 * turns)
    assert row.cost == Decimal("0.0000001") * 2 * turns
