"""Feedback on assistant messages: ``/api/mpai/v1/messages/<id>/feedback/``."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from mpai.feedback import set_feedback
from mpai.models import Conversation, Feedback, Message

pytestmark = pytest.mark.django_db


def url(message_id: int) -> str:
    return f"/api/mpai/v1/messages/{message_id}/feedback/"


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def exchange(user):
    conv = Conversation.objects.create(owner=user, title="t")
    question = Message.objects.create(conversation=conv, owner=user, role="user", content="q")
    reply = Message.objects.create(
        conversation=conv, owner=user, role="assistant", content="a", model="gpt-4o"
    )
    return question, reply


def test_put_creates_then_replaces_get_delete(user):
    _, reply = exchange(user)
    api = client_for(user)
    first = api.put(url(reply.pk), {"rating": "up", "comment": "Clear."}, format="json")
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"message", "rating", "comment", "created_at", "updated_at"}
    assert (body["message"], body["rating"], body["comment"]) == (reply.pk, "up", "Clear.")
    again = api.put(url(reply.pk), {"rating": "down"}, format="json")
    assert again.status_code == 200
    assert (again.json()["rating"], again.json()["comment"]) == ("down", "")
    assert Feedback.objects.count() == 1
    assert api.get(url(reply.pk)).json()["rating"] == "down"
    assert api.delete(url(reply.pk)).status_code == 204
    assert api.get(url(reply.pk)).json() == {"detail": "No feedback on this message."}
    assert api.delete(url(reply.pk)).status_code == 404


def test_anonymous_is_401(user):
    _, reply = exchange(user)
    anonymous = APIClient()
    for method in ("get", "put", "delete"):
        response = getattr(anonymous, method)(url(reply.pk))
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"


def test_user_message_foreign_and_unknown_ids_are_404(make_user):
    alice, bob = make_user(), make_user()
    question, _ = exchange(alice)
    _, bobs_reply = exchange(bob)
    api = client_for(alice)
    for message_id in (question.pk, bobs_reply.pk, 10**12):
        response = api.put(url(message_id), {"rating": "up"}, format="json")
        assert response.status_code == 404
        assert response.json() == {"detail": "No assistant message with this id."}
        assert api.get(url(message_id)).status_code == 404
        assert api.delete(url(message_id)).status_code == 404
    assert Feedback.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "rating"),
        ({"rating": "meh"}, "rating"),
        ({"rating": "up", "comment": "x" * 2001}, "comment"),
    ],
)
def test_bad_body_is_400_naming_the_field(user, body, field):
    _, reply = exchange(user)
    response = client_for(user).put(url(reply.pk), body, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {field}


def test_comment_of_2000_characters_and_non_json_body(user):
    _, reply = exchange(user)
    api = client_for(user)
    ok = api.put(url(reply.pk), {"rating": "up", "comment": "x" * 2000}, format="json")
    assert ok.status_code == 200
    assert api.put(url(reply.pk), "rating=up", content_type="text/plain").status_code == 415


def test_service_validates_and_the_pair_is_unique(user):
    _, reply = exchange(user)
    with pytest.raises(ValueError, match="rating"):
        set_feedback(user, reply.pk, "sideways")
    set_feedback(user, reply.pk, "up")
    with pytest.raises(IntegrityError), transaction.atomic():
        Feedback.objects.create(user=user, message=reply, rating="down")
