"""The OpenAPI 3 schema (drf-spectacular) at /api/mpai/v1/schema/.

Real responses of every endpoint are validated against it with ``jsonschema``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml
from django.core.management import call_command
from django.urls import include
from django.urls import path as route
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from mpai.api.schema import MpaiSchemaGenerator
from tests.api.helpers import BASE, client_for, conversation, messages

SCHEMA = f"{BASE}schema/"
pytestmark = pytest.mark.django_db

ENDPOINTS = {
    ("/api/mpai/v1/chat/", "post"),
    ("/api/mpai/v1/chat-history/", "get"),
    ("/api/mpai/v1/conversations/", "get"),
    ("/api/mpai/v1/conversations/", "post"),
    ("/api/mpai/v1/conversations/{id}/", "get"),
    ("/api/mpai/v1/conversations/{id}/", "patch"),
    ("/api/mpai/v1/conversations/{id}/", "delete"),
    ("/api/mpai/v1/conversations/{id}/messages/", "get"),
}


@pytest.fixture
def openapi() -> dict[str, Any]:
    response = APIClient().get(SCHEMA, {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def to_json_schema(node: Any, components: dict[str, Any]) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: ``$ref`` inlined, ``nullable`` as ``null``."""
    if isinstance(node, list):
        return [to_json_schema(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        return to_json_schema(copy.deepcopy(components[name]), components)
    out = {key: to_json_schema(value, components) for key, value in node.items()}
    if out.pop("nullable", False):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def check(openapi, path, method, response, media="application/json"):
    """Validate ``response``'s body against the schema of ``path``/``method``/status."""
    operation = openapi["paths"][path][method]
    documented = operation["responses"][str(response.status_code)]
    schema = to_json_schema(
        documented["content"][media]["schema"], openapi["components"]["schemas"]
    )
    jsonschema.validate(response.json(), schema)
    if response.status_code == 200 and "results" in response.json():
        assert response.json()["results"], "validate a page with rows"


def test_yaml_by_default_json_on_request():
    response = APIClient().get(SCHEMA)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    document = yaml.safe_load(response.content)
    assert document["openapi"].startswith("3.")
    assert document["info"] == {"title": "mpai REST API", "version": "1"}
    as_json = APIClient().get(SCHEMA, {"format": "json"})
    assert as_json["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert json.loads(as_json.content) == document


def test_every_endpoint_is_documented(openapi):
    found = {(p, m) for p, ops in openapi["paths"].items() for m in ops}
    assert found >= ENDPOINTS
    assert all(p.startswith("/api/mpai/v1/") for p, _ in found)
    assert ("/api/mpai/v1/schema/", "get") not in found
    for path, method in ENDPOINTS:
        operation = openapi["paths"][path][method]
        assert operation.get("summary"), (path, method)
        assert operation["responses"], (path, method)
    for path, method in {e for e in ENDPOINTS if e[1] in ("post", "patch")}:
        assert "requestBody" in openapi["paths"][path][method], path
    history = openapi["paths"]["/api/mpai/v1/chat-history/"]["get"]
    assert {p["name"] for p in history["parameters"]} == {"page", "per_page", "cursor"}


OWN_ROUTES = {"chat", "chat-history", "conversations", "conversation", "conversation-messages"}


def test_schema_generation_has_no_warnings_and_validates():
    """As ``manage.py spectacular --validate --fail-on-warn``, for these endpoints."""
    from mpai.api import urls

    patterns = [
        route("api/mpai/", include(([p for p in urls.urlpatterns if p.name in OWN_ROUTES], "x")))
    ]
    schema = MpaiSchemaGenerator(patterns=patterns).get_schema(request=None, public=True)
    assert not GENERATOR_STATS, GENERATOR_STATS
    validate_schema(schema)  # the OpenAPI 3 specification's JSON Schema
    assert len(schema["paths"]) == 5


def test_site_schema_command_runs(tmp_path):
    call_command("spectacular", "--validate", "--file", str(tmp_path / "s.yml"))
    assert (
        "/api/mpai/v1/conversations/{id}/"
        in yaml.safe_load((tmp_path / "s.yml").read_text())["paths"]
    )


def test_real_responses_match_the_schema(openapi, user, settings):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.offline.OfflineProvider",
            "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0, "reply": "Sure."},
        },
    }
    api = client_for(user)
    conv = conversation(user, "Plans")
    messages(conv, 3)
    conv_path = "/api/mpai/v1/conversations/{id}/"
    lst = "/api/mpai/v1/conversations/"

    chat = api.post(f"{BASE}chat/", {"conversation": None, "content": "Hi"}, format="json")
    assert chat.status_code == 201
    check(openapi, "/api/mpai/v1/chat/", "post", chat)
    bad_chat = api.post(f"{BASE}chat/", {"conversation": 987654, "content": "Hi"}, format="json")
    assert bad_chat.status_code == 404
    check(openapi, "/api/mpai/v1/chat/", "post", bad_chat)

    check(openapi, "/api/mpai/v1/chat-history/", "get", api.get(f"{BASE}chat-history/"))
    cursor_page = api.get(f"{BASE}chat-history/", {"cursor": "", "per_page": 2})
    assert cursor_page.json()["next"]
    check(openapi, "/api/mpai/v1/chat-history/", "get", cursor_page)

    check(openapi, lst, "get", api.get(lst))
    created = api.post(lst, {"title": "New"}, format="json")
    assert created.status_code == 201
    check(openapi, lst, "post", created)
    check(openapi, conv_path, "get", api.get(f"{lst}{conv.pk}/"))
    check(openapi, conv_path, "patch", api.patch(f"{lst}{conv.pk}/", {"title": "R"}, format="json"))
    check(openapi, conv_path + "messages/", "get", api.get(f"{lst}{conv.pk}/messages/"))
    deleted = api.delete(f"{lst}{created.json()['id']}/")
    assert str(deleted.status_code) in openapi["paths"][conv_path]["delete"]["responses"]


def test_documented_404_and_400_exist(openapi):
    for path in ("/api/mpai/v1/conversations/{id}/", "/api/mpai/v1/conversations/{id}/messages/"):
        for method in openapi["paths"][path]:
            assert "404" in openapi["paths"][path][method]["responses"], (path, method)
