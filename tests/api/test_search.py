"""GET /api/mpai/v1/search/: the user's own messages and conversation titles, on the
real PostgreSQL (full-text search on the GIN expression index), plus the portable
``icontains`` fallback (forced, and once on a real SQLite database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone
from rest_framework.test import APIClient

from mpai.chat.search import (
    _ToTsVector,
    search_conversations,
    search_messages,
    search_terms,
    tsquery_text,
    window_excerpt,
)
from mpai.models import Conversation, Message

URL = "/api/mpai/v1/search/"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def say(conversation, role, content, *, seconds_ago=0.0):
    msg = Message.objects.create(
        conversation=conversation, owner=conversation.owner, role=role, content=content
    )
    when = timezone.now() - timedelta(seconds=seconds_ago)
    Message.objects.filter(pk=msg.pk).update(created_at=when)
    msg.refresh_from_db()
    return msg


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api(user):
    return client_for(user)


# --- the endpoint -----------------------------------------------------------------


def test_anonymous_is_401_with_token_challenge():
    response = APIClient().get(URL, {"q": "x"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "This field is required."),
        ({"q": ""}, "This field may not be blank."),
        ({"q": "   "}, "This field may not be blank."),
        ({"q": "a" * 201}, "Ensure this field has no more than 200 characters."),
    ],
)
def test_bad_q_is_400_in_drf_shape(api, params, message):
    response = api.get(URL, params)
    assert response.status_code == 400
    assert response.json() == {"q": [message]}


def test_q_of_200_characters_is_accepted(api):
    assert api.get(URL, {"q": "a" * 200}).status_code == 200


def test_bad_cursor_is_400(api):
    assert api.get(URL, {"q": "x", "cursor": "nonsense"}).json() == {"cursor": ["Invalid cursor."]}


def test_result_shape_and_prefix_match(api, user):
    conv = Conversation.objects.create(owner=user, title="Cartoons")
    say(conv, "user", "Are there AI tools for 2D animation?", seconds_ago=5)
    reply = say(conv, "assistant", "Yes: several tools animate characters.", seconds_ago=4)
    say(conv, "user", "Unrelated words only", seconds_ago=3)
    body = api.get(URL, {"q": "anim"}).json()
    assert set(body) == {"q", "conversations", "next", "previous", "results"}
    assert body["q"] == "anim"
    assert body["next"] is None
    assert [row["role"] for row in body["results"]] == ["assistant", "user"]
    row = body["results"][0]
    assert set(row) == {
        "message",
        "conversation",
        "conversation_title",
        "role",
        "created_at",
        "excerpt",
    }
    assert row["message"] == reply.pk
    assert row["conversation"] == conv.pk
    assert row["conversation_title"] == "Cartoons"
    assert "«animate»" in row["excerpt"]
    assert "«animation»" in body["results"][1]["excerpt"]


def test_every_word_must_match(api, user):
    conv = Conversation.objects.create(owner=user)
    both = say(conv, "user", "Machine learning basics")
    say(conv, "user", "A washing machine")
    results = api.get(URL, {"q": "machine LEARN"}).json()["results"]
    assert [row["message"] for row in results] == [both.pk]
    assert "«Machine» «learning»" in results[0]["excerpt"]


def test_only_the_users_own_messages_and_titles(make_user):
    alice, bob = make_user(), make_user()
    for owner in (alice, bob):
        conv = Conversation.objects.create(owner=owner, title="Renewal of membership")
        say(conv, "user", "When does my membership renew?")
        say(conv, "assistant", "Your membership renews monthly.")
    body = client_for(alice).get(URL, {"q": "membership"}).json()
    ids = {row["message"] for row in body["results"]}
    assert ids == set(Message.objects.filter(owner=alice).values_list("pk", flat=True))
    assert [c["id"] for c in body["conversations"]] == [Conversation.objects.get(owner=alice).pk]


def test_conversation_titles_section_on_the_first_page_only(api, user):
    titled = Conversation.objects.create(owner=user, title="Python packaging")
    Conversation.objects.create(owner=user, title="Cooking")
    for i in range(3):
        say(titled, "user", f"python question {i}", seconds_ago=10 - i)
    body = api.get(URL, {"q": "pyth", "per_page": 2}).json()
    assert body["conversations"] == [
        {
            "id": titled.pk,
            "title": "Python packaging",
            "updated_at": body["conversations"][0]["updated_at"],
            "excerpt": "«Python» packaging",
        }
    ]
    second = api.get(body["next"]).json()
    assert second["conversations"] == []
    assert len(second["results"]) == 1


def test_cursor_pages_cover_all_matches_once_newest_first(api, user):
    conv = Conversation.objects.create(owner=user)
    same_instant = timezone.now() - timedelta(hours=1)
    saved = [say(conv, "user", f"recipe number {i}", seconds_ago=100 - i) for i in range(12)]
    # Ties on created_at: the keyset's id tiebreak must still give each row once.
    Message.objects.filter(pk__in=[m.pk for m in saved[:5]]).update(created_at=same_instant)
    say(conv, "user", "no match here")
    seen, url, params = [], URL, {"q": "recipe", "per_page": 5}
    while url:
        body = api.get(url, params).json()
        seen += [row["message"] for row in body["results"]]
        url, params = body["next"], None
    assert len(seen) == 12
    assert set(seen) == {m.pk for m in saved}
    newest_first = list(
        Message.objects.filter(pk__in=seen)
        .order_by("-created_at", "-id")
        .values_list("pk", flat=True)
    )
    assert seen == newest_first


def test_marker_characters_in_the_text_are_replaced(api, user):
    conv = Conversation.objects.create(owner=user)
    say(conv, "assistant", "He said «bonjour» to the zebra")
    excerpt = api.get(URL, {"q": "zebra"}).json()["results"][0]["excerpt"]
    assert "said ‹bonjour› to the «zebra»" in excerpt
    assert "«bonjour»" not in excerpt


def test_q_without_words_matches_nothing(api, user):
    say(Conversation.objects.create(owner=user), "user", "!!! ???")
    body = api.get(URL, {"q": "!!! ???"}).json()
    assert body["results"] == []
    assert body["conversations"] == []


# --- the service and the index ------------------------------------------------------


def test_search_terms_and_tsquery():
    assert search_terms("Machine-learning, machine_LEARNING; naïve x2") == [
        "machine",
        "learning",
        "naïve",
        "x2",
    ]
    assert tsquery_text(["machine", "x2"]) == "'machine':* & 'x2':*"
    assert search_terms("'; DROP TABLE --") == ["drop", "table"]


def test_the_search_expression_is_served_by_the_gin_index(user):
    from django.contrib.postgres.search import SearchQuery

    assert connection.vendor == "postgresql"
    query = SearchQuery("'anim':*", config="simple", search_type="raw")
    qs = (
        Message.objects.alias(_document=_ToTsVector(F("content")))
        .filter(_document=query)
        .order_by()
    )
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    assert "mpai_msg_content_fts_idx" in qs.explain()
    conversations = (
        Conversation.objects.alias(_document=_ToTsVector(F("title")))
        .filter(_document=query)
        .order_by()
    )
    assert "mpai_conv_title_fts_idx" in conversations.explain()


# --- the portable fallback (icontains) -----------------------------------------------


def test_fallback_matches_substrings_of_the_owners_messages_only(make_user):
    alice, bob = make_user(), make_user()
    conv = Conversation.objects.create(owner=alice, title="Reanimation notes")
    hit = say(conv, "user", "The reanimated ANIMATION looked fine", seconds_ago=2)
    say(conv, "user", "nothing to see", seconds_ago=1)
    say(Conversation.objects.create(owner=bob), "user", "animation too")
    found = list(search_messages(alice, "anim looked", vendor="sqlite"))
    assert found == [hit]
    assert not hasattr(found[0], "excerpt")
    titles = search_conversations(alice, "anim", vendor="sqlite")
    assert [(c.pk, c.excerpt) for c in titles] == [(conv.pk, "Re«anim»ation notes")]


def test_window_excerpt():
    text = " ".join(f"w{i}" for i in range(100)) + " the Zebra crossed " + "x " * 200
    excerpt = window_excerpt(text, ["zebra"])
    assert excerpt.startswith("… ")
    assert excerpt.endswith(" …")
    assert "the «Zebra» crossed" in excerpt
    assert len(excerpt) < 260
    assert window_excerpt("short «text» here", ["text"]) == "short ‹«text»› here"
    assert window_excerpt("no hit", ["zebra"]) == "no hit"


def test_the_fallback_on_a_real_sqlite_database(tmp_path):
    """The demo project on SQLite: the migrations (0009 is a no-op there) and a search."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DJANGO_DEBUG="1",
        MPAI_SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        MPAI_DATA_DIR=str(tmp_path / "data"),
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    script = (
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "from mpai.models import Conversation, Message\n"
        "from mpai.chat.search import search_messages, message_excerpt, search_terms\n"
        "u = get_user_model().objects.create_user('s')\n"
        "c = Conversation.objects.create(owner=u, title='t')\n"
        "Message.objects.create(conversation=c, owner=u, role='user', content='Hello Zebra')\n"
        "m = list(search_messages(u, 'zeb'))\n"
        "print(json.dumps([message_excerpt(x, search_terms('zeb')) for x in m]))\n"
    )
    out = subprocess.run(
        [*manage, "shell", "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == ["Hello «Zeb»ra"]


# --- the plan of a large user's search -----------------------------------------------


def _show(name):
    with connection.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


@pytest.fixture
def large_user(user, monkeypatch):
    """``user`` counted as large (threshold 0) with one matching message."""
    from mpai.chat import search

    conversation = Conversation.objects.create(owner=user, title="t")
    say(conversation, "user", "one zeppelin")
    monkeypatch.setattr(search, "OWNER_SCAN_MAX_MESSAGES", 0)
    return user


def test_a_large_users_walk_that_runs_out_of_time_goes_to_the_gin_index(large_user):
    """The first evaluation (the walk) outlives WALK_TIMEOUT_MS and is cancelled by
    PostgreSQL; the second runs with plain index scans off; both settings are gone
    afterwards."""
    from mpai.chat.search import bounded_search

    seen = []

    def evaluate():
        seen.append((_show("statement_timeout"), _show("enable_indexscan")))
        if len(seen) == 1:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(30)")  # cancelled at the walk's timeout
        return list(search_messages(large_user, "zeppelin"))

    rows = bounded_search(large_user, evaluate)
    assert seen == [("50ms", "on"), ("0", "off")]
    assert [m.content for m in rows] == ["one zeppelin"]
    assert (_show("statement_timeout"), _show("enable_indexscan")) == ("0", "on")


def test_a_large_users_quick_walk_is_the_answer(large_user):
    from mpai.chat.search import bounded_search

    seen = []

    def evaluate():
        seen.append(_show("statement_timeout"))
        return list(search_messages(large_user, "zeppelin"))

    assert len(bounded_search(large_user, evaluate)) == 1
    assert seen == ["50ms"]
    assert _show("statement_timeout") == "0"


def test_a_small_users_search_keeps_the_planners_choice(user, api, monkeypatch):
    from mpai.chat import search
    from mpai.chat.search import bounded_search

    conversation = Conversation.objects.create(owner=user, title="t")
    say(conversation, "user", "one zeppelin")
    seen = []
    bounded_search(user, lambda: seen.append(_show("statement_timeout")))
    assert seen == ["0"]
    # And through the endpoint, large or small, the same rows come back.
    small = api.get(URL, {"q": "zeppelin"}).json()["results"]
    monkeypatch.setattr(search, "OWNER_SCAN_MAX_MESSAGES", 0)
    large = api.get(URL, {"q": "zeppelin"}).json()["results"]
    assert [r["message"] for r in small] == [r["message"] for r in large] != []


def test_other_database_errors_of_the_walk_are_raised(large_user):
    from django.db import ProgrammingError

    from mpai.chat.search import bounded_search

    def evaluate():
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    with pytest.raises(ProgrammingError):
        bounded_search(large_user, evaluate)
