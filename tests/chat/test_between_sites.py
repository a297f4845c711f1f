"""Two sites on one Redis (issue 8, "Between sites"): each with its own PostgreSQL
database, where ids start at 1 in both, and the same cache settings.

Each site runs in its own process (``tests/chat/site_worker.py``) against a private
``redis-server``; site B's prompts must never carry site A's history or profile, with
or without a ``KEY_PREFIX``, and ``mpai.W002`` warns exactly when there is none.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from tests.chat.site_worker import ROOT, run_site
from tests.redis_server import RedisServer

SECRET = "the vault code is 4711"
A_USER = {"username": "ann", "first_name": "AnnOfSiteA", "email": "ann@site-a.test"}
B_USER = {"username": "bob", "first_name": "BobOfSiteB", "email": "bob@site-b.test"}
DROP = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
_redis_dbs = itertools.count(0)


def _admin_connection() -> psycopg.Connection[Any]:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=int(db["PORT"] or 5432),
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


def _url(name: str) -> str:
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT'] or 5432}/{name}"


@pytest.fixture(scope="module")
def site_databases() -> Iterator[dict[str, str]]:
    """Two new, migrated databases ``{"a": url, "b": url}``, dropped afterwards."""
    run_id = os.environ.get("MPAI_TEST_RUN_ID", str(os.getpid()))
    names = {site: f"test_mpai_{run_id}_site_{site}" for site in ("a", "b")}
    with _admin_connection() as admin:
        for name in names.values():
            admin.execute(DROP.format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    urls = {site: _url(name) for site, name in names.items()}
    try:
        migrations = [
            subprocess.Popen(
                [sys.executable, "manage.py", "migrate", "--settings=tests.settings", "-v0"],
                cwd=ROOT,
                env={**os.environ, "MPAI_TEST_DATABASE_URL": url},
                stderr=subprocess.PIPE,
                text=True,
            )
            for url in urls.values()
        ]
        for process in migrations:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
        yield urls
    finally:
        with _admin_connection() as admin:
            for name in names.values():
                admin.execute(DROP.format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def caches(backend: str, location: str, prefix: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"BACKEND": backend, "LOCATION": location}
    if prefix is not None:
        entry["KEY_PREFIX"] = prefix
    return {"default": entry}


def text_of(prompts: list[list[dict[str, str]]]) -> str:
    return "\n".join(m["content"] for prompt in prompts for m in prompt)


@pytest.mark.parametrize(
    ("backend", "prefixes"),
    [
        ("mpai.cache.LayeredCache", (None, None)),
        ("django_redis.cache.RedisCache", (None, None)),
        ("mpai.cache.LayeredCache", ("site-a", "site-b")),
    ],
    ids=["layered-no-prefix", "django-redis-no-prefix", "layered-with-prefixes"],
)
def test_site_b_prompts_never_carry_site_a_history_or_profile(
    site_databases: dict[str, str], shared_redis: RedisServer, backend: str, prefixes: Any
) -> None:
    location = f"{shared_redis.url}/{next(_redis_dbs)}"
    a = run_site(
        site_databases["a"],
        {
            "caches": caches(backend, location, prefixes[0]),
            "flush": True,
            "user": A_USER,
            "messages": [f"Remember this: {SECRET}.", "What did I tell you?"],
        },
    )
    b = run_site(
        site_databases["b"],
        {
            "caches": caches(backend, location, prefixes[1]),
            "flush": True,
            "user": B_USER,
            "messages": ["Hello from site B.", "And a second question from B."],
        },
    )
    # The collision the issue describes: the same user and conversation ids.
    assert (a["user"], a["conversation"]) == (b["user"], b["conversation"]) == (1, 1)
    # Site A uses its own cached history and profile.
    assert SECRET in text_of(a["prompts"][1:])
    assert A_USER["first_name"] in text_of(a["prompts"])
    seen_by_b = text_of(b["prompts"])
    for leaked in (SECRET, A_USER["first_name"], A_USER["email"], *a["replies"]):
        assert leaked not in seen_by_b
    assert b["cached"] == [False, False]
    # Site B still has its own history and profile.
    assert "Hello from site B." in text_of(b["prompts"][1:])
    assert B_USER["first_name"] in seen_by_b
    warned = "mpai.W002" in a["checks"] and "mpai.W002" in b["checks"]
    assert warned is (prefixes[0] is None)
