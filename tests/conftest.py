"""Fixtures shared by the whole suite."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test.utils import override_settings

from config.celery import app as celery_app  # noqa: F401  (the app reads tests.settings)
from tests.asgi_server import AsgiServer, server_env
from tests.redis_server import RedisServer

pytest_plugins = ["tests.fake_openai"]


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[RedisServer]:
    """Start a private redis-server and point CACHES and CHANNEL_LAYERS at it."""
    server = RedisServer()
    server.start()
    from django.conf import settings

    caches = {alias: dict(conf) for alias, conf in settings.CACHES.items()}
    caches["default"]["LOCATION"] = f"{server.url}/0"
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": f"{server.url}/1", "socket_timeout": 30}]},
        }
    }
    override = override_settings(
        CACHES=caches, CHANNEL_LAYERS=layers, MPAI_TEST_REDIS_URL=server.url
    )
    override.enable()
    try:
        yield server
    finally:
        override.disable()
        server.stop()


_usernames = itertools.count(1)


@pytest.fixture
def make_user(db: Any) -> Callable[..., Any]:
    """Factory: ``make_user(username=None, password="pw")`` creates a user."""

    def make(username: str | None = None, password: str = "pw", **extra: Any) -> Any:
        name = username or f"user{next(_usernames)}"
        return get_user_model().objects.create_user(username=name, password=password, **extra)

    return make


@pytest.fixture
def user(make_user: Callable[..., Any]) -> Any:
    return make_user()


@pytest.fixture(scope="session")
def e2e_server(django_db_setup, redis_server, fake_openai_url) -> Iterator[AsgiServer]:
    """The demo project in uvicorn on the test database, the private Redis and the fake
    OpenAI server (tests using it need ``django_db(transaction=True)``)."""
    server = AsgiServer(server_env(redis_server.url, fake_openai_url))
    server.start()
    yield server
    server.stop()


#: Stream slots a test left taken (e.g. a response never read, freed when collected):
#: later tests do not wait for them.
_slots_left_taken = [0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Let this process's chat turns end before the test's fixtures are torn down.

    A turn's work after its final frame (the ``request_complete`` receivers: the usage
    row, the metrics) still writes to the database while the client already has its
    answer; a transactional test's flush (``TRUNCATE``) then deadlocked with it. A turn
    holds its stream slot until that work is done, so wait (deadline 10 s) until no
    more slots are taken than before; never fails the test.
    """
    from mpai.chat.capacity import stream_slots

    deadline = time.monotonic() + 10.0
    while True:
        in_use = stream_slots().stats().in_use
        _slots_left_taken[0] = min(_slots_left_taken[0], in_use)
        if in_use <= _slots_left_taken[0]:
            return
        if time.monotonic() > deadline:
            _slots_left_taken[0] = in_use
            return
        _pause.wait(0.01)


_pause = threading.Event()
