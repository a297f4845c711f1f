"""Cursor (keyset) pagination: conversations, a conversation's messages, chat history.

Also: the chat history's page/per_page mode is unchanged, and no query count grows
with the page size.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mpai.api.pagination import (
    ConversationCursorPagination,
    HistoryCursorPagination,
    MessageCursorPagination,
)
from mpai.chat.history import message_history
from mpai.models import Conversation, Message
from tests.api.helpers import BASE, client_for, conversation, messages

CONVERSATIONS = f"{BASE}conversations/"
HISTORY = f"{BASE}chat-history/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    return client_for(user)


def walk(api, url):
    """Follow ``next`` from ``url``; return (ids in order, pages)."""
    ids, pages = [], 0
    while url:
        response = api.get(url)
        assert response.status_code == 200, response.content
        body = response.json()
        ids += [row["id"] for row in body["results"]]
        pages += 1
        url = body["next"]
    return ids, pages


def cursor_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["cursor"][0]


def test_conversations_walk_every_row_once(api, user):
    convs = [conversation(user, f"c{i}", minutes_ago=i) for i in range(7)]
    ids, pages = walk(api, f"{CONVERSATIONS}?per_page=3")
    assert ids == [c.pk for c in convs]
    assert pages == 3


def test_conversations_default_per_page_is_20(api, user):
    for i in range(21):
        conversation(user, minutes_ago=i)
    body = api.get(CONVERSATIONS).json()
    assert len(body["results"]) == 20
    assert body["next"] is not None


def test_previous_goes_back(api, user):
    convs = [conversation(user, minutes_ago=i) for i in range(5)]
    second = api.get(api.get(f"{CONVERSATIONS}?per_page=2").json()["next"]).json()
    assert [r["id"] for r in second["results"]] == [convs[2].pk, convs[3].pk]
    first = api.get(second["previous"]).json()
    assert [r["id"] for r in first["results"]] == [convs[0].pk, convs[1].pk]


def test_messages_walk_with_identical_timestamps(api, user):
    conv = conversation(user)
    saved = messages(conv, 9, same_time=True)  # the unique id breaks the ties
    ids, _ = walk(api, f"{CONVERSATIONS}{conv.pk}/messages/?per_page=4")
    assert ids == [m.pk for m in saved]


def test_messages_walk_in_order(api, user):
    conv = conversation(user)
    saved = messages(conv, 25)
    ids, pages = walk(api, f"{CONVERSATIONS}{conv.pk}/messages/")
    assert ids == [m.pk for m in saved]
    assert pages == 2


def test_cursor_last_is_the_newest_page_and_previous_walks_back(api, user):
    """``?cursor=last``: the conversation's newest messages, still oldest first, with
    ``previous`` leading back to the start (the widget's scroll upwards)."""
    conv = conversation(user)
    saved = messages(conv, 25)
    response = api.get(f"{CONVERSATIONS}{conv.pk}/messages/?cursor=last&per_page=10")
    assert response.status_code == 200, response.content
    body = response.json()
    assert [row["id"] for row in body["results"]] == [m.pk for m in saved[-10:]]
    assert body["next"] is None
    seen, url = [row["id"] for row in body["results"]], body["previous"]
    while url:
        page = api.get(url).json()
        seen = [row["id"] for row in page["results"]] + seen
        url = page["previous"]
    assert seen == [m.pk for m in saved]


def test_history_cursor_mode_walks_newest_first(api, user):
    conv_a, conv_b = conversation(user), conversation(user)
    saved = messages(conv_a, 4) + messages(conv_b, 3)
    expected = [m.pk for m in sorted(saved, key=lambda m: m.pk)]
    Message.objects.filter(pk__in=expected).update(
        created_at=Message.objects.get(pk=saved[0].pk).created_at
    )
    body = api.get(f"{HISTORY}?cursor=&per_page=3").json()
    assert set(body) == {"next", "previous", "results"}
    assert body["previous"] is None
    ids, pages = walk(api, f"{HISTORY}?cursor=&per_page=3")
    assert ids == sorted(expected, reverse=True)
    assert pages == 3


def test_history_cursor_rows_have_the_history_shape(api, user):
    messages(conversation(user), 1)
    row = api.get(f"{HISTORY}?cursor=").json()["results"][0]
    page_row = api.get(HISTORY).json()["results"][0]
    assert row == page_row


def test_history_without_cursor_keeps_page_per_page(api, user):
    messages(conversation(user), 12)
    body = api.get(f"{HISTORY}?page=2&per_page=5").json()
    assert set(body) == {"count", "page", "per_page", "results"}
    assert (body["count"], body["page"], body["per_page"]) == (12, 2, 5)
    assert [r["content"] for r in body["results"]] == ["m6", "m5", "m4", "m3", "m2"]


def test_history_cursor_with_page_params_is_400(api):
    response = api.get(f"{HISTORY}?cursor=&page=2")
    assert response.status_code == 400
    assert list(response.json()) == ["cursor"]
    cursor_page = api.get(f"{HISTORY}?cursor=&per_page=5")  # per_page: both modes
    assert cursor_page.status_code == 200
    assert set(cursor_page.json()) == {"next", "previous", "results"}


@pytest.mark.parametrize("url", [CONVERSATIONS, HISTORY])
@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "%%%",
        base64.b64encode(b"o=x").decode(),
        base64.b64encode(b"r=2&p=not-a-date").decode(),
        base64.b64encode(b"p=not-a-date").decode(),
        "w6k=",  # decodes to non-ASCII bytes
    ],
)
def test_bad_cursor_is_400(api, url, cursor):
    response = api.get(url, {"cursor": cursor})
    assert response.status_code == 400
    assert response.json() == {"cursor": ["Invalid cursor."]}


def test_bad_cursor_on_messages_is_400(api, user):
    conv = conversation(user)
    response = api.get(f"{CONVERSATIONS}{conv.pk}/messages/", {"cursor": "nope"})
    assert response.status_code == 400
    assert response.json() == {"cursor": ["Invalid cursor."]}


@pytest.mark.parametrize("size", ["0", "101", "x", "-1", "2.5"])
@pytest.mark.parametrize(("url", "extra"), [(CONVERSATIONS, {}), (HISTORY, {"cursor": ""})])
def test_bad_per_page_is_400(api, url, extra, size):
    response = api.get(url, {**extra, "per_page": size})
    assert response.status_code == 400
    assert list(response.json()) == ["per_page"]


def test_per_page_100_is_fine(api, user):
    assert api.get(CONVERSATIONS, {"per_page": "100"}).status_code == 200


def test_cursor_from_another_user_shows_only_own_rows(api, user, make_user):
    other = make_user()
    for i in range(4):
        conversation(other, minutes_ago=i)
    mine = conversation(user, minutes_ago=100)
    next_url = client_for(other).get(f"{CONVERSATIONS}?per_page=2").json()["next"]
    ids, _ = walk(api, next_url)
    assert ids == [mine.pk]


def test_cursor_query_is_keyset_without_offset_growth(api, user):
    for i in range(30):
        conversation(user, minutes_ago=i)
    url = f"{CONVERSATIONS}?per_page=5"
    for _ in range(4):
        url = api.get(url).json()["next"]
    with CaptureQueriesContext(connection) as ctx:
        api.get(url)
    (sql,) = [q["sql"] for q in ctx.captured_queries if "mpai_conversation" in q["sql"]]
    assert '"mpai_conversation"."updated_at" <' in sql
    assert 'ORDER BY "mpai_conversation"."updated_at" DESC, "mpai_conversation"."id" DESC' in sql
    assert "OFFSET" not in sql
    assert "LIMIT 6" in sql
    assert "COUNT(" not in sql.upper()


@pytest.mark.parametrize(
    ("pagination", "queryset", "index"),
    [
        (
            ConversationCursorPagination,
            lambda user, conv: Conversation.objects.filter(owner=user),
            "mpai_conv_owner_upd_id_idx",
        ),
        (
            MessageCursorPagination,
            lambda user, conv: Message.objects.filter(conversation=conv),
            "mpai_msg_conv_created_idx",
        ),
        (
            HistoryCursorPagination,
            lambda user, conv: message_history(user=user),
            "mpai_msg_owner_created_idx",
        ),
    ],
)
def test_cursor_ordering_is_served_by_its_index(user, pagination, queryset, index):
    conv = conversation(user)
    messages(conv, 3)
    ordered = queryset(user, conv).order_by(*pagination.ordering)[:21]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        sql, params = ordered.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index in plan
    assert "Sort" not in plan


def history_queries(api, params):
    with CaptureQueriesContext(connection) as ctx:
        response = api.get(HISTORY, params)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_query_count_does_not_grow_with_per_page(api, user):
    conv = conversation(user)
    messages(conv, 60)
    for i in range(60):
        conversation(user, minutes_ago=i)
    conv_url = f"{CONVERSATIONS}{conv.pk}/messages/"
    counts = {}
    for size in (5, 50):
        with CaptureQueriesContext(connection) as ctx:
            assert len(api.get(HISTORY, {"per_page": size}).json()["results"]) == size
        counts.setdefault("history page", []).append(len(ctx.captured_queries))
        with CaptureQueriesContext(connection) as ctx:
            assert len(api.get(HISTORY, {"cursor": "", "per_page": size}).json()["results"]) == size
        counts.setdefault("history cursor", []).append(len(ctx.captured_queries))
        with CaptureQueriesContext(connection) as ctx:
            assert len(api.get(CONVERSATIONS, {"per_page": size}).json()["results"]) == size
        counts.setdefault("conversations", []).append(len(ctx.captured_queries))
        with CaptureQueriesContext(connection) as ctx:
            assert len(api.get(conv_url, {"per_page": size}).json()["results"]) == size
        counts.setdefault("messages", []).append(len(ctx.captured_queries))
    assert counts == {
        "history page": [2, 2],  # COUNT + the page
        "history cursor": [1, 1],
        "conversations": [1, 1],
        "messages": [3, 3],  # the conversation (ownership) + the page + own feedback
    }


def test_detail_and_writes_use_fixed_queries(api, user, django_assert_num_queries):
    conv = conversation(user)
    with django_assert_num_queries(1):
        api.get(f"{CONVERSATIONS}{conv.pk}/")
    with django_assert_num_queries(1):
        api.post(CONVERSATIONS, {"title": "n"}, format="json")
