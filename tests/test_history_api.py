"""GET /api/mpai/v1/chat-history/ (CONTRACTS.md, REST)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mpai.models import Conversation, Message

URL = "/api/mpai/v1/chat-history/"
pytestmark = pytest.mark.django_db


def add_exchange(user, n: int, conversation=None):
    """Save ``n`` user/assistant pairs, 1 s apart, oldest first; returns the conversation."""
    conversation = conversation or Conversation.objects.create(owner=user, title="t")
    base = timezone.now() - timedelta(days=1)
    for i in range(n):
        for j, role in enumerate(("user", "assistant")):
            msg = Message.objects.create(
                conversation=conversation, owner=user, role=role, content=f"{role} {i}"
            )
            Message.objects.filter(pk=msg.pk).update(created_at=base + timedelta(seconds=2 * i + j))
    return conversation


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_lists_both_roles_newest_first_with_count(api, user):
    add_exchange(user, 3)
    body = api.get(URL).json()
    assert body["count"] == 6
    assert body["page"] == 1
    assert body["per_page"] == 10
    assert [row["content"] for row in body["results"]] == [
        "assistant 2",
        "user 2",
        "assistant 1",
        "user 1",
        "assistant 0",
        "user 0",
    ]


def test_row_shape(api, user):
    conversation = add_exchange(user, 1)
    row = api.get(URL).json()["results"][0]
    assert set(row) == {
        "id",
        "conversation",
        "role",
        "content",
        "status",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "created_at",
    }
    assert row["conversation"] == conversation.pk
    assert row["role"] == "assistant"
    assert row["status"] == "complete"
    assert row["created_at"].endswith("Z") or "+" in row["created_at"]


def test_pages_do_not_overlap_and_cover_everything(api, user):
    add_exchange(user, 12)  # 24 messages
    seen = []
    for page in (1, 2, 3):
        body = api.get(URL, {"page": page, "per_page": 10}).json()
        seen += [row["id"] for row in body["results"]]
    assert len(seen) == 24 == len(set(seen))
    assert api.get(URL, {"page": 3, "per_page": 10}).json()["results"].__len__() == 4


def test_page_past_the_end_is_empty_not_404(api, user):
    add_exchange(user, 1)
    response = api.get(URL, {"page": 9})
    assert response.status_code == 200
    assert response.json()["results"] == []
    assert response.json()["count"] == 2


def test_other_users_messages_never_appear(api, user, make_user):
    other = make_user()
    add_exchange(other, 4)
    add_exchange(user, 1)
    body = api.get(URL, {"per_page": 100}).json()
    assert body["count"] == 2
    assert {row["content"] for row in body["results"]} == {"user 0", "assistant 0"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": "abc"}, "page"),
        ({"page": "1.5"}, "page"),
        ({"per_page": 0}, "per_page"),
        ({"per_page": 101}, "per_page"),
        ({"per_page": "ten"}, "per_page"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api, params, field):
    response = api.get(URL, params)
    assert response.status_code == 400
    body = response.json()
    assert list(body) == [field]
    assert isinstance(body[field], list)
    assert body[field][0]


def test_per_page_100_is_allowed(api, user):
    add_exchange(user, 60)
    body = api.get(URL, {"per_page": 100}).json()
    assert len(body["results"]) == 100


def test_anonymous_is_refused(db):
    assert APIClient().get(URL).status_code in (401, 403)


def test_token_authentication(user):
    add_exchange(user, 1)
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.get(URL)
    assert response.status_code == 200
    assert response.json()["count"] == 2


def test_session_authentication(client, user):
    add_exchange(user, 1)
    client.force_login(user)
    assert client.get(URL).json()["count"] == 2
