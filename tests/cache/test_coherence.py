"""Coherence across processes: a write in one process reaches another process's L1.

The entries are set with a 300 s lifetime, so the second process sees the new value
only because of the invalidation message, not because its L1 entry expired.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection

from mpai.cache import LayeredCache
from tests.cache.conftest import layered_params
from tests.cache.worker import Peer
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def params(redis_db: str, cache_table: str) -> dict[str, Any]:
    return layered_params(redis_db, cache_table, prefix=f"coh-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def here(redis_db: str, params: dict[str, Any]) -> LayeredCache:
    cache = LayeredCache(redis_db, params)
    assert cache.wait_ready(10.0)
    return cache


@pytest.fixture
def make_peer(redis_db: str, params: dict[str, Any]) -> Iterator[Callable[[], Peer]]:
    peers: list[Peer] = []

    def make() -> Peer:
        peer = Peer(
            {"location": redis_db, "params": params, "db_name": connection.settings_dict["NAME"]}
        )
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


def test_a_set_and_a_delete_reach_the_other_process_l1(
    here: LayeredCache, make_peer: Callable[[], Peer]
) -> None:
    peer = make_peer()
    received = peer.request(op="stats")["stats"]["memory"]["invalidations_received"]
    here.set("k", "v1", 300)
    # The set's own invalidation must have reached the peer before it reads: arriving
    # after the read, it would drop the entry that read put into the peer's L1.
    wait_until(
        lambda: peer.request(op="stats")["stats"]["memory"]["invalidations_received"] > received,
        what="the peer to receive the invalidation of the first set",
    )
    assert peer.request(op="get", key="k") == {"value": "v1"}
    hits = peer.request(op="stats")["stats"]["memory"]["hits"]
    assert peer.request(op="get", key="k") == {"value": "v1"}
    assert peer.request(op="stats")["stats"]["memory"]["hits"] == hits + 1  # served by L1

    here.set("k", "v2", 300)
    assert peer.request(op="watch", key="k", expected="v2", timeout=10)["seen"] is True
    here.delete("k")
    assert peer.request(op="watch", key="k", expected=None, timeout=10)["seen"] is True
    stats = peer.request(op="stats")["stats"]
    assert stats["memory"]["invalidations_received"] >= 2
    assert stats["memory"]["listener"] == "connected"


def test_writes_in_the_other_process_reach_this_l1(
    here: LayeredCache, make_peer: Callable[[], Peer]
) -> None:
    peer = make_peer()
    here.set("k", "mine", 300)
    assert here.get("k") == "mine"
    peer.request(op="set", key="k", value="theirs", timeout=300)
    wait_until(lambda: here.get("k") == "theirs")


def test_clear_and_set_many_reach_the_other_process(
    here: LayeredCache, make_peer: Callable[[], Peer]
) -> None:
    peer = make_peer()
    here.set_many({"a": 1, "b": 2}, 300)
    assert peer.request(op="get", key="a") == {"value": 1}
    here.set_many({"a": 10, "b": 20}, 300)
    assert peer.request(op="watch", key="a", expected=10, timeout=10)["seen"] is True
    here.clear()
    assert peer.request(op="watch", key="b", expected=None, timeout=10)["seen"] is True


def test_a_process_ignores_the_echo_of_its_own_writes(
    here: LayeredCache, make_peer: Callable[[], Peer]
) -> None:
    peer = make_peer()
    received = here.stats()["memory"]["invalidations_received"]
    here.set("mine", "kept", 300)
    # Messages on one channel arrive in order: once the peer's later message is in,
    # the echo of ours has been handled too.
    peer.request(op="set", key="other", value=1, timeout=300)
    wait_until(lambda: here.stats()["memory"]["invalidations_received"] > received)
    assert here.stack.store.peek(here.make_key("mine")) is not None


def test_several_processes_converge(here: LayeredCache, make_peer: Callable[[], Peer]) -> None:
    peers = [make_peer() for _ in range(3)]
    here.set("k", 0, 300)
    for peer in peers:
        assert peer.request(op="get", key="k") == {"value": 0}
    for round_ in range(1, 6):
        here.set("k", round_, 300)
        for peer in peers:
            assert peer.request(op="watch", key="k", expected=round_, timeout=10)["seen"]
