"""``GET /api/mpai/v1/usage/``: the signed-in user's own figures, in the exact shape."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal

import pytest
from django.urls import include, reverse
from django.urls import path as route
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.validation import validate_schema
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mpai.api.schema import MpaiSchemaGenerator
from mpai.usage.store import add_usage
from tests.api.test_schema import to_json_schema

pytestmark = pytest.mark.django_db

URL = "/api/mpai/v1/usage/"


def today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def test_the_route_is_named_usage() -> None:
    assert reverse("mpai:mpai_api:usage") == URL


def test_shows_only_the_users_own_figures_in_the_exact_shape(configure, make_user, adapter) -> None:
    configure()
    me, other = make_user(), make_user()
    adapter.held[me.get_username()] = "Pro"
    day = today()
    earlier = day.replace(day=1) - datetime.timedelta(days=1)  # last month: not counted
    add_usage(
        user_id=me.pk,
        day=day,
        model="a",
        prompt_tokens=100,
        completion_tokens=20,
        cost=Decimal("0.0005"),
    )
    add_usage(
        user_id=me.pk,
        day=day,
        model="b",
        prompt_tokens=1,
        completion_tokens=2,
        cost=Decimal("0.25"),
    )
    add_usage(user_id=me.pk, day=earlier, model="a", prompt_tokens=7, completion_tokens=7)
    add_usage(
        user_id=other.pk,
        day=day,
        model="a",
        prompt_tokens=999,
        completion_tokens=999,
        cost=Decimal("9"),
    )
    if day.day > 1:
        add_usage(user_id=me.pk, day=day.replace(day=1), model="a", prompt_tokens=50)
    client = APIClient()
    client.force_authenticate(me)
    response = client.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"plan", "today", "month", "limits", "resets_at"}
    assert body["plan"] == "Pro"
    assert body["today"] == {
        "requests": 2,
        "prompt_tokens": 101,
        "completion_tokens": 22,
        "cost": "0.2505000000",
    }
    month = body["month"]
    assert set(month) == {"requests", "prompt_tokens", "completion_tokens", "cost"}
    assert month["requests"] == (3 if day.day > 1 else 2)
    assert month["prompt_tokens"] == (151 if day.day > 1 else 101)
    assert body["limits"] == {
        "messages_per_day": 5,
        "tokens_per_day": 1000,
        "tokens_per_month": 3000,
    }
    resets = {
        key: datetime.datetime.fromisoformat(value) for key, value in body["resets_at"].items()
    }
    assert set(resets) == {"day", "month"}
    tomorrow = day + datetime.timedelta(days=1)
    assert resets["day"] == datetime.datetime.combine(tomorrow, datetime.time(), datetime.UTC)
    assert resets["month"].day == 1
    assert resets["month"] >= resets["day"]


def test_a_user_without_plan_gets_the_default_limits_and_zeros(configure, user) -> None:
    configure()
    token = Token.objects.create(user=user)
    client = APIClient()
    response = client.get(URL, HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    body = response.json()
    assert body["plan"] is None
    assert body["today"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": "0"}
    assert body["limits"]["messages_per_day"] == 2


def test_signed_out_is_401_with_a_token_challenge() -> None:
    response = APIClient().get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_the_schema_documents_it_and_the_response_validates(configure, user) -> None:
    from mpai.api import urls

    patterns = [
        route("api/mpai/", include(([p for p in urls.urlpatterns if p.name == "usage"], "x")))
    ]
    GENERATOR_STATS.reset()
    schema = MpaiSchemaGenerator(patterns=patterns).get_schema(request=None, public=True)
    assert not GENERATOR_STATS, GENERATOR_STATS
    validate_schema(schema)
    operation = schema["paths"][URL]["get"]
    assert operation["summary"]
    configure()
    client = APIClient()
    client.force_authenticate(user)
    body = client.get(URL).json()
    documented = json.loads(json.dumps(schema, default=str))
    response_schema = to_json_schema(
        documented["paths"][URL]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ],
        documented["components"]["schemas"],
    )
    import jsonschema

    jsonschema.validate(body, response_schema)
