"""POST /api/mpai/v1/chat/: a chat turn over HTTP."""

import pytest
from rest_framework.test import APIClient

from mpai.models import Message

URL = "/api/mpai/v1/chat/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user, settings):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.offline.OfflineProvider",
            "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0, "reply": "Sure thing."},
        },
    }
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_turn_returns_the_saved_reply(api):
    response = api.post(URL, {"conversation": None, "content": "Can I pause?"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["content"] == "Sure thing."
    assert body["status"] == "complete"
    assert Message.objects.get(pk=body["message"]).content == "Sure thing."


def test_rate_limited_is_429_with_retry_after(api, settings, user):
    settings.MPAI = {
        **settings.MPAI,
        "RATE_LIMIT": {"CAPACITY": 1, "REFILL_RATE": 0.01, "KEY_PREFIX": f"rl-http-{user.pk}:"},
    }
    assert api.post(URL, {"content": "one"}, format="json").status_code == 201
    response = api.post(URL, {"content": "two"}, format="json")
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert response.json()["code"] == "rate_limited"


def test_overloaded_is_503_with_retry_after_and_saves_nothing(api, settings, user):
    from mpai.chat.capacity import stream_slots

    settings.MPAI = {**settings.MPAI, "STREAM_WORKERS": 1, "STREAM_QUEUE": 0}
    held = stream_slots().acquire()  # another member's stream holds the only slot
    try:
        response = api.post(URL, {"content": "Can I pause?"}, format="json")
    finally:
        held.release()
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert response.json()["code"] == "overloaded"
    assert not Message.objects.filter(owner=user).exists()
    assert api.post(URL, {"content": "Can I pause?"}, format="json").status_code == 201


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"content": "  "}, 400, "invalid_message"),
        ({"content": "hi", "conversation": 999999}, 404, "conversation_not_found"),
    ],
)
def test_bad_input(api, payload, status, code):
    response = api.post(URL, payload, format="json")
    assert response.status_code == status
    assert response.json()["code"] == code


def test_missing_content_is_a_validation_error(api):
    response = api.post(URL, {}, format="json")
    assert response.status_code == 400
    assert "content" in response.json()


def test_provider_error_is_502_with_the_partial_message(user, settings, fake_openai):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {"base_url": fake_openai.base_url},
        },
    }
    fake_openai.stream_then_error(["Par", "tial"], "crashed")
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(URL, {"content": "hello"}, format="json")
    assert response.status_code == 502
    body = response.json()
    assert body["code"] == "provider_error"
    assert Message.objects.get(pk=body["message"]).content == "Partial"
