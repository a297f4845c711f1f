"""The read-replica router (mpai.db_router) on a real second PostgreSQL database.

The "replica" is its own database with the primary's schema (pg_dump --schema-only).
Nothing replicates into it: :func:`sync` copies the primary's rows when a test says
so, so every write made after the last sync is replica lag, for as long as the test
wants. Reads that show a row written after the last sync came from the primary.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection, connections, router, transaction
from django.test import Client
from django.test.utils import override_settings

from mpai import db_router
from mpai.db_router import ReplicaRouter, read_replica_for
from mpai.models import Conversation, HistoryCount, Message

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "replica"])

ALIAS = "replica"
#: Tables copied by sync(), parents first.
TABLES = ["auth_user", "mpai_conversation", "mpai_message", "mpai_historycount"]


def _admin_conninfo(db: dict[str, Any], name: str) -> str:
    return psycopg.conninfo.make_conninfo(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"] or "postgres",
        password=db["PASSWORD"] or "",
        dbname=name,
    )


@pytest.fixture(scope="module")
def replica_database(django_db_setup: Any) -> Iterator[str]:
    """A second database named uniquely for this run with the test database's schema,
    registered as ``replica`` (module scope: before the test case checks its aliases)."""
    primary = connection.settings_dict
    name = f"mpai_replica_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin_conninfo(primary, "postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = {
        **os.environ,
        "PGHOST": primary["HOST"] or "127.0.0.1",
        "PGPORT": str(primary["PORT"] or 5432),
        "PGUSER": primary["USER"] or "postgres",
        "PGPASSWORD": primary["PASSWORD"] or "",
    }
    schema = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", primary["NAME"]],
        env=env,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", name],
        input=schema,
        env=env,
        check=True,
        capture_output=True,
    )
    # The primary's settings are complete (Django filled in every default).
    connections.settings[ALIAS] = {
        **primary,
        "NAME": name,
        "TEST": {**primary["TEST"], "NAME": name, "MIRROR": None},
    }
    try:
        yield name
    finally:
        connections[ALIAS].close()
        del connections[ALIAS]
        del connections.settings[ALIAS]
        with psycopg.connect(_admin_conninfo(primary, "postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def replica(replica_database: str, settings: Any) -> str:
    """The replica with the router and MPAI["READ_REPLICA"] on (a 60 s pin)."""
    settings.DATABASE_ROUTERS = ["mpai.db_router.ReplicaRouter"]
    settings.MPAI = {**settings.MPAI, "READ_REPLICA": ALIAS, "READ_REPLICA_PIN_SECONDS": 60}
    return replica_database


def sync() -> None:
    """Catch the replica up: replace its rows of :data:`TABLES` by the primary's."""
    replica_connection = connections[ALIAS]
    replica_connection.ensure_connection()
    connection.ensure_connection()
    with replica_connection.cursor() as out:
        # As a streaming replica applies changes: no triggers, no constraint checks.
        out.execute("SET session_replication_role = replica")
        out.execute(f"TRUNCATE {', '.join(reversed(TABLES))} CASCADE")
        for table in TABLES:
            with (
                connection.cursor() as src,
                src.cursor.copy(f"COPY {table} TO STDOUT") as reader,  # type: ignore[attr-defined]
                out.cursor.copy(f"COPY {table} FROM STDIN") as writer,  # type: ignore[attr-defined]
            ):
                for block in reader:
                    writer.write(block)
        out.execute("SET session_replication_role = DEFAULT")


def write_without_pin(owner: Any, conversation: Conversation, content: str) -> Message:
    """A message the replica does not have yet, written with no pin (lag, unseen)."""
    with override_settings(MPAI={**_mpai(), "READ_REPLICA_PIN_SECONDS": 0}):
        return Message.objects.create(
            conversation=conversation, owner=owner, role="user", content=content
        )


def _mpai() -> dict[str, Any]:
    from django.conf import settings

    return dict(settings.MPAI)


def contents(owner: Any) -> list[str]:
    return list(Message.objects.filter(owner=owner).values_list("content", flat=True))


@pytest.fixture
def two_users(make_user, replica) -> tuple[Any, Any, Conversation, Conversation]:
    with override_settings(MPAI={**_mpai(), "READ_REPLICA_PIN_SECONDS": 0}):
        alice, bob = make_user(), make_user()
        conversations = []
        for user in (alice, bob):
            conversation = Conversation.objects.create(owner=user, title="t")
            Message.objects.create(
                conversation=conversation, owner=user, role="user", content=f"{user.pk} synced"
            )
            conversations.append(conversation)
    sync()
    return alice, bob, conversations[0], conversations[1]


def test_requests_read_history_from_the_replica_and_see_its_lag(two_users) -> None:
    alice, _bob, conversation, _ = two_users
    write_without_pin(alice, conversation, "not replicated yet")
    with read_replica_for(alice):
        assert Message.objects.filter(owner=alice).db == ALIAS
        assert contents(alice) == [f"{alice.pk} synced"]
        assert Conversation.objects.filter(owner=alice).count() == 1
    # Outside a request (websocket chat, tasks, commands): the primary.
    assert Message.objects.filter(owner=alice).db == "default"
    assert contents(alice) == [f"{alice.pk} synced", "not replicated yet"]
    sync()
    with read_replica_for(alice):
        assert contents(alice) == [f"{alice.pk} synced", "not replicated yet"]


def test_a_users_own_just_written_message_is_read_from_the_primary(two_users) -> None:
    alice, bob, conversation, bob_conversation = two_users
    write_without_pin(bob, bob_conversation, "bob, not replicated yet")
    Message.objects.create(
        conversation=conversation, owner=alice, role="user", content="alice just wrote"
    )
    with read_replica_for(alice):
        assert Message.objects.filter(owner=alice).db == "default"
        assert contents(alice) == [f"{alice.pk} synced", "alice just wrote"]
        assert HistoryCount.objects.get(owner=alice).messages == 2
    # Alice's write pins Alice only: Bob still reads the lagging replica.
    with read_replica_for(bob):
        assert Message.objects.filter(owner=bob).db == ALIAS
        assert contents(bob) == [f"{bob.pk} synced"]
        assert HistoryCount.objects.get(owner=bob).messages == 1
    # When the pin window ends (its cache key expires), Alice is back on the replica.
    from django.core.cache import cache

    from mpai.site_identity import site_identity

    cache.delete(db_router.replica_pin_key(alice.pk, site_identity()))
    with read_replica_for(alice):
        assert contents(alice) == [f"{alice.pk} synced"]


def test_the_pin_waits_for_the_commit_and_reads_in_a_transaction_use_the_primary(
    two_users,
) -> None:
    alice, _, conversation, _ = two_users
    with read_replica_for(alice), transaction.atomic():
        Message.objects.create(
            conversation=conversation, owner=alice, role="user", content="in a transaction"
        )
        # Not committed: no replica can have it, the primary's transaction can.
        assert contents(alice)[-1] == "in a transaction"
        assert not db_router.pinned_to_primary(alice.pk)
    assert db_router.pinned_to_primary(alice.pk)


def test_the_rest_api_reads_the_replica_and_the_writer_sees_their_write(two_users) -> None:
    alice, bob, _, bob_conversation = two_users
    write_without_pin(bob, bob_conversation, "bob, not replicated yet")
    from django.conf import settings

    middleware = [*settings.MIDDLEWARE, "mpai.db_router.ReplicaUserMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        as_alice, as_bob = Client(), Client()
        as_alice.force_login(alice)
        as_bob.force_login(bob)
        created = as_alice.post(
            "/api/mpai/v1/conversations/", {"title": "fresh"}, content_type="application/json"
        )
        assert created.status_code == 201, created.content
        listed = as_alice.get("/api/mpai/v1/conversations/").json()["results"]
        assert next(c["title"] for c in listed) == "fresh"
        history = as_bob.get("/api/mpai/v1/chat-history/").json()
        assert [m["content"] for m in history["results"]] == [f"{bob.pk} synced"]
    assert not Conversation.objects.using(ALIAS).filter(title="fresh").exists()


def test_writes_always_go_to_the_primary_and_migrate_skips_the_replica(replica) -> None:
    routing = ReplicaRouter()
    assert routing.db_for_write(Message) == "default"
    assert router.db_for_write(Conversation) == "default"
    assert routing.allow_migrate(ALIAS, "mpai") is False
    assert routing.allow_migrate("default", "mpai") is None
    # Other models get no opinion.
    from django.contrib.auth import get_user_model

    with read_replica_for(None):
        assert routing.db_for_read(get_user_model()) is None
        assert routing.db_for_read(Message) == ALIAS


def test_no_replica_setting_means_no_routing(settings) -> None:
    settings.MPAI = {**settings.MPAI, "READ_REPLICA": None}
    routing = ReplicaRouter()
    with read_replica_for(None):
        assert routing.db_for_read(Message) is None
        assert routing.db_for_write(Message) is None
    assert not db_router.pin_to_primary(1)
