"""Fixtures shared by the whole suite."""

from __future__ import annotations

import itertools
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
