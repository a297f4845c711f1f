"""The feedback admin: read-only list with filters and the counts by model above it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

import mpai.admin_feedback  # noqa: F401  (registered by mpai.admin too)
from mpai.feedback import counts_by_model
from mpai.models import Conversation, Feedback, Message

pytestmark = pytest.mark.django_db
LIST = "/admin/mpai/feedback/"


@pytest.fixture
def admin_client_(make_user):
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def rated(make_user):
    ratings = [("gpt-4o", "up"), ("gpt-4o", "up"), ("gpt-4o", "down"), ("o3-mini", "down")]
    for model, rating in ratings:
        user = make_user()
        conv = Conversation.objects.create(owner=user)
        reply = Message.objects.create(
            conversation=conv, owner=user, role="assistant", content="a", model=model
        )
        Feedback.objects.create(user=user, message=reply, rating=rating, comment="c")


def test_changelist_shows_counts_by_model(admin_client_, rated):
    response = admin_client_.get(LIST)
    assert response.status_code == 200
    assert response.context["feedback_by_model"] == [
        {"model": "gpt-4o", "up": 2, "down": 1, "total": 3},
        {"model": "o3-mini", "up": 0, "down": 1, "total": 1},
    ]
    html = response.content.decode()
    assert 'id="feedback-by-model"' in html
    assert "<td>gpt-4o</td><td>2</td><td>1</td><td>3</td>" in html


def test_counts_follow_the_filters(admin_client_, rated):
    by_rating = admin_client_.get(LIST, {"rating": "down"}).context["feedback_by_model"]
    assert {row["model"]: row["down"] for row in by_rating} == {"gpt-4o": 1, "o3-mini": 1}
    by_model = admin_client_.get(LIST, {"message__model": "o3-mini"})
    assert by_model.context["feedback_by_model"] == [
        {"model": "o3-mini", "up": 0, "down": 1, "total": 1}
    ]


def test_counts_are_one_query(rated):
    with CaptureQueriesContext(connection) as queries:
        counts_by_model()
    assert len(queries) == 1


def test_feedback_is_read_only_in_the_admin(admin_client_, rated):
    feedback = Feedback.objects.first()
    assert admin_client_.get(f"{LIST}add/").status_code == 403
    admin_client_.post(f"{LIST}{feedback.pk}/change/", {"rating": "down", "comment": "x"})
    feedback.refresh_from_db()
    assert feedback.comment == "c"
    page = admin_client_.get(f"{LIST}{feedback.pk}/change/")
    assert page.status_code == 200
    assert b'name="comment"' not in page.content
