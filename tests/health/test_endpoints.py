"""Liveness and readiness endpoints: status codes, 503 when the database check fails,
details for staff only, no dependency touched by liveness."""

from __future__ import annotations

import pytest
from django.urls import reverse

from mpai.health import endpoints
from mpai.health.checks import CacheCheck, DatabaseCheck
from mpai.health.results import HealthCheck, ServiceUnavailable

pytestmark = pytest.mark.django_db


class DownDatabase(HealthCheck):
    name = "database"

    def check(self):
        raise ServiceUnavailable("database 'default' unavailable (OperationalError)")


def test_urls():
    assert reverse("mpai:mpai_api:health-live") == "/api/mpai/v1/health/live/"
    assert reverse("mpai:mpai_api:health-ready") == "/api/mpai/v1/health/ready/"


def test_liveness_is_200_and_touches_no_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/api/mpai/v1/health/live/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-store" in response["Cache-Control"]


def test_readiness_anonymous_gets_the_status_only(client):
    response = client.get("/api/mpai/v1/health/ready/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_details_for_staff_only(client, make_user):
    client.force_login(make_user())
    assert client.get("/api/mpai/v1/health/ready/").json() == {"status": "ok"}
    client.force_login(make_user(is_staff=True))
    body = client.get("/api/mpai/v1/health/ready/").json()
    assert body["status"] == "ok"
    assert [check["name"] for check in body["checks"]] == ["database", "cache"]
    assert all(check["status"] == "ok" for check in body["checks"])


def test_readiness_is_503_when_the_database_check_fails(client, make_user, monkeypatch):
    monkeypatch.setattr(
        endpoints, "readiness_checks", lambda: [DownDatabase(), CacheCheck(alias="default")]
    )
    response = client.get("/api/mpai/v1/health/ready/")
    assert response.status_code == 503
    assert response.json() == {"status": "error"}
    client.force_login(make_user(is_staff=True))
    body = client.get("/api/mpai/v1/health/ready/").json()
    assert body["checks"][0]["status"] == "error"
    assert body["checks"][1]["status"] == "ok"


def test_readiness_is_503_when_the_cache_is_down(client, settings, redis_server):
    from tests.redis_server import free_port

    caches = {alias: dict(conf) for alias, conf in settings.CACHES.items()}
    caches["default"]["LOCATION"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    settings.CACHES = caches
    response = client.get("/api/mpai/v1/health/ready/")
    assert response.status_code == 503
    assert response.json() == {"status": "error"}


def test_readiness_checks_are_the_database_round_trip_and_the_default_cache():
    database, cache = endpoints.readiness_checks()
    assert isinstance(database, DatabaseCheck)
    assert database.stats is False
    assert isinstance(cache, CacheCheck)
    assert cache.alias == "default"
