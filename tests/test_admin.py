"""The admin shows chat history read-only: no one edits or adds a message or conversation.

Deletion stays for staff with the delete permission.
"""

from __future__ import annotations

import pytest
from django.test import Client

from mpai.models import Conversation, Message

pytestmark = pytest.mark.django_db

REPLY = "Your membership renews on the first of the month."


@pytest.fixture
def admin_client_(make_user):
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def reply(user):
    conversation = Conversation.objects.create(owner=user, title="Renewal")
    Message.objects.create(conversation=conversation, owner=user, role="user", content="When?")
    return Message.objects.create(
        conversation=conversation, owner=user, role="assistant", content=REPLY
    )


def message_url(message, action="change"):
    return f"/admin/mpai/message/{message.pk}/{action}/"


def conversation_url(conversation, action="change"):
    return f"/admin/mpai/conversation/{conversation.pk}/{action}/"


def test_message_change_form_shows_the_content_without_an_editable_field(admin_client_, reply):
    response = admin_client_.get(message_url(reply))
    assert response.status_code == 200
    page = response.content.decode()
    assert REPLY in page
    assert 'name="content"' not in page
    assert 'name="role"' not in page
    assert 'name="_save"' not in page


def test_posting_the_message_change_form_does_not_change_the_content(admin_client_, reply):
    response = admin_client_.post(
        message_url(reply),
        {
            "conversation": reply.conversation_id,
            "owner": reply.owner_id,
            "role": "assistant",
            "content": "Your membership is free forever.",
            "status": "complete",
        },
    )
    assert response.status_code == 403
    reply.refresh_from_db()
    assert reply.content == REPLY


def test_messages_cannot_be_added_in_the_admin(admin_client_, reply):
    assert admin_client_.get("/admin/mpai/message/add/").status_code == 403
    response = admin_client_.post(
        "/admin/mpai/message/add/",
        {
            "conversation": reply.conversation_id,
            "owner": reply.owner_id,
            "role": "assistant",
            "content": "forged",
            "status": "complete",
        },
    )
    assert response.status_code == 403
    assert not Message.objects.filter(content="forged").exists()


def test_conversation_change_form_has_no_editable_title_or_messages(admin_client_, reply):
    conversation = reply.conversation
    response = admin_client_.get(conversation_url(conversation))
    assert response.status_code == 200
    page = response.content.decode()
    assert REPLY in page
    assert 'name="title"' not in page
    assert "messages-0-content" not in page

    response = admin_client_.post(
        conversation_url(conversation),
        {
            "owner": conversation.owner_id,
            "title": "Forged",
            "messages-TOTAL_FORMS": "0",
            "messages-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "Renewal"


def test_conversations_cannot_be_added_in_the_admin(admin_client_):
    assert admin_client_.get("/admin/mpai/conversation/add/").status_code == 403


def test_staff_with_the_permission_can_still_delete_a_message(admin_client_, reply):
    page = admin_client_.get(message_url(reply)).content.decode()
    assert message_url(reply, "delete") in page
    response = admin_client_.post(message_url(reply, "delete"), {"post": "yes"})
    assert response.status_code == 302
    assert not Message.objects.filter(pk=reply.pk).exists()


def test_staff_with_the_permission_can_still_delete_a_conversation(admin_client_, reply):
    conversation = reply.conversation
    response = admin_client_.post(conversation_url(conversation, "delete"), {"post": "yes"})
    assert response.status_code == 302
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()


@pytest.mark.parametrize("url", ["/admin/mpai/message/", "/admin/mpai/conversation/"])
def test_history_lists_read_no_whole_table(admin_client_, reply, url, monkeypatch):
    """At millions of rows: no COUNT(*) of the whole table, no SELECT DISTINCT for a
    filter or a date hierarchy, no scan of message text for a search."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mpai.admin import EstimatedCountPaginator

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE mpai_message")
        cursor.execute("ANALYZE mpai_conversation")
    monkeypatch.setattr(EstimatedCountPaginator, "exact_below", 0)  # a "large" table
    with CaptureQueriesContext(connection) as queries:
        response = admin_client_.get(url)
    assert response.status_code == 200
    sql = [q["sql"].upper() for q in queries.captured_queries]
    assert not [q for q in sql if "COUNT(" in q and "MPAI_" in q]
    assert not [q for q in sql if "DISTINCT" in q and "MPAI_" in q]
    assert "reltuples" in " ".join(q["sql"] for q in queries.captured_queries)

    with CaptureQueriesContext(connection) as queries:
        searched = admin_client_.get(url, {"q": "some words"})
    assert searched.status_code == 200
    assert not [
        q for q in queries.captured_queries if '"content"' in q["sql"] and "LIKE" in q["sql"]
    ]


def test_a_filtered_history_list_is_counted_exactly(admin_client_, reply):
    response = admin_client_.get("/admin/mpai/message/", {"role__exact": "assistant"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
