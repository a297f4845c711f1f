"""The conversations REST API: list, create, read, rename, delete, messages."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mpai.models import Conversation, Message
from tests.api.helpers import BASE, client_for, conversation, messages

LIST = f"{BASE}conversations/"
pytestmark = pytest.mark.django_db


def detail(pk: int) -> str:
    return f"{LIST}{pk}/"


def messages_url(pk: int) -> str:
    return f"{LIST}{pk}/messages/"


@pytest.fixture
def api(user):
    return client_for(user)


def test_list_most_recent_activity_first_with_id_tiebreak(api, user, make_user):
    old = conversation(user, "old", minutes_ago=30)
    new = conversation(user, "new", minutes_ago=1)
    tie_a = conversation(user, "tie a", minutes_ago=10)
    tie_b = conversation(user, "tie b")
    Conversation.objects.filter(pk=tie_b.pk).update(updated_at=tie_a.updated_at)
    conversation(make_user(), "someone else's")
    body = api.get(LIST).json()
    assert set(body) == {"next", "previous", "results"}
    assert body["next"] is None
    assert body["previous"] is None
    assert [row["id"] for row in body["results"]] == [new.pk, tie_b.pk, tie_a.pk, old.pk]


def test_conversation_shape(api, user):
    conv = conversation(user, "Plans")
    row = api.get(LIST).json()["results"][0]
    assert set(row) == {"id", "title", "created_at", "updated_at"}
    assert row["id"] == conv.pk
    assert row["title"] == "Plans"
    assert row["updated_at"].endswith("Z")


def test_create_with_and_without_title(api, user):
    response = api.post(LIST, {"title": "  Billing  "}, format="json")
    assert response.status_code == 201
    assert response.json()["title"] == "Billing"
    created = Conversation.objects.get(pk=response.json()["id"])
    assert created.owner == user
    untitled = api.post(LIST, {}, format="json")
    assert untitled.status_code == 201
    assert untitled.json()["title"] == ""


@pytest.mark.parametrize(
    ("title", "error"),
    [
        ("   ", "This field may not be blank."),
        ("x" * 201, "Ensure this field has no more than 200 characters."),
        (None, "This field may not be null."),
    ],
)
def test_create_rejects_bad_title(api, title, error):
    response = api.post(LIST, {"title": title}, format="json")
    assert response.status_code == 400
    assert response.json() == {"title": [error]}


def test_create_ignores_read_only_fields_and_owner(api, user, make_user):
    other = make_user()
    response = api.post(LIST, {"title": "a", "id": 999999, "owner": other.pk}, format="json")
    assert response.status_code == 201
    assert response.json()["id"] != 999999
    assert Conversation.objects.get(pk=response.json()["id"]).owner == user


def test_retrieve(api, user):
    conv = conversation(user, "Mine")
    response = api.get(detail(conv.pk))
    assert response.status_code == 200
    assert response.json()["title"] == "Mine"
    assert response.json()["id"] == conv.pk


def test_rename_strips_and_bumps_updated_at(api, user):
    conv = conversation(user, "Old", minutes_ago=5)
    response = api.patch(detail(conv.pk), {"title": "  New name "}, format="json")
    assert response.status_code == 200
    assert response.json()["title"] == "New name"
    conv.refresh_from_db()
    assert conv.title == "New name"
    assert response.json()["updated_at"] > api.get(LIST).json()["results"][0]["created_at"]


def test_rename_200_chars_is_fine(api, user):
    conv = conversation(user)
    response = api.patch(detail(conv.pk), {"title": "y" * 200}, format="json")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, {"title": ["This field is required."]}),
        ({"title": ""}, {"title": ["This field may not be blank."]}),
        ({"title": " \t "}, {"title": ["This field may not be blank."]}),
        ({"title": "z" * 201}, {"title": ["Ensure this field has no more than 200 characters."]}),
    ],
)
def test_rename_validation(api, user, body, error):
    conv = conversation(user, "Keep")
    response = api.patch(detail(conv.pk), body, format="json")
    assert response.status_code == 400
    assert response.json() == error
    conv.refresh_from_db()
    assert conv.title == "Keep"


def test_put_is_not_allowed(api, user):
    conv = conversation(user)
    assert api.put(detail(conv.pk), {"title": "x"}, format="json").status_code == 405


def test_delete_removes_its_messages_only(api, user):
    conv = conversation(user)
    messages(conv, 4)
    kept = conversation(user)
    messages(kept, 2)
    response = api.delete(detail(conv.pk))
    assert response.status_code == 204
    assert not Conversation.objects.filter(pk=conv.pk).exists()
    assert not Message.objects.filter(conversation_id=conv.pk).exists()
    assert Message.objects.filter(conversation=kept).count() == 2
    assert api.get(detail(conv.pk)).status_code == 404


def test_messages_in_order_with_shape(api, user):
    conv = conversation(user)
    saved = messages(conv, 5)
    body = api.get(messages_url(conv.pk)).json()
    assert set(body) == {"next", "previous", "results"}
    assert [row["id"] for row in body["results"]] == [m.pk for m in saved]
    row = body["results"][1]
    assert set(row) == {
        "id",
        "conversation",
        "role",
        "status",
        "content",
        "created_at",
        "model",
        "finish_reason",
        "feedback",
    }
    assert row["conversation"] == conv.pk
    assert row["role"] == "assistant"
    assert row["status"] == "complete"
    assert row["model"] == "gpt-4o"
    assert row["finish_reason"] == "stop"
    assert row["feedback"] is None


def test_messages_carry_the_users_own_feedback_only(api, user, make_user):
    from mpai.models import Feedback

    conv = conversation(user)
    reply = messages(conv, 2)[1]
    Feedback.objects.create(user=user, message=reply, rating="down", comment="too long")
    Feedback.objects.create(user=make_user(), message=reply, rating="up")  # not theirs
    rows = api.get(f"{LIST}{conv.pk}/messages/").json()["results"]
    assert rows[1]["feedback"] == {"rating": "down", "comment": "too long"}


def test_messages_of_another_conversation_stay_out(api, user):
    conv = conversation(user)
    other = conversation(user)
    messages(other, 3)
    assert api.get(messages_url(conv.pk)).json()["results"] == []


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("patch", ""), ("delete", ""), ("get", "messages/")],
)
def test_another_users_conversation_is_404(api, make_user, method, suffix):
    theirs = conversation(make_user(), "secret")
    messages(theirs, 2)
    response = getattr(api, method)(f"{detail(theirs.pk)}{suffix}", {"title": "x"}, format="json")
    assert response.status_code == 404
    assert "secret" not in response.content.decode()
    assert "m0" not in response.content.decode()
    theirs.refresh_from_db()
    assert theirs.title == "secret"
    assert Message.objects.filter(conversation=theirs).count() == 2


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("patch", ""), ("delete", ""), ("get", "messages/")],
)
def test_unknown_id_is_404(api, method, suffix):
    response = getattr(api, method)(f"{detail(987654)}{suffix}", {"title": "x"}, format="json")
    assert response.status_code == 404


def test_non_integer_id_is_404(api):
    assert api.get(f"{LIST}abc/").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", LIST),
        ("post", LIST),
        ("get", detail(1)),
        ("patch", detail(1)),
        ("delete", detail(1)),
        ("get", messages_url(1)),
    ],
)
def test_anonymous_is_401_with_token_challenge(method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_token_authentication_works(user):
    conv = conversation(user, "via token")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert client.get(detail(conv.pk)).json()["title"] == "via token"


def test_session_post_needs_csrf(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post(LIST, {"title": "x"}, format="json").status_code == 403
    assert not Conversation.objects.filter(owner=user).exists()
