"""Search of a user's own chat history: message text and conversation titles.

The query ``q`` is split into words (runs of letters and digits, lower-cased; anything
else separates words). A message or title matches when it contains **every** word as a
word **prefix**: ``anim`` finds "animation", ``learn`` finds "learning".

PostgreSQL: full-text search (PostgreSQL docs, "Text Search", chapter 12) with the
``simple`` configuration: each word of the text lower-cased, no stemming and no stop
words, so it behaves the same in every language a membership site may chat in (a
language configuration such as ``english`` would stem other languages' words wrongly and
drop "the", "it"). The query is ``to_tsquery('simple', 'w1:* & w2:*')`` (section 12.3.2,
prefix matching) against ``to_tsvector('simple'::regconfig, content)``, which is served
by the GIN expression indexes of migration ``0009_message_search``; the expression here
and there must stay identical or the planner cannot use the index. Excerpts come from
``ts_headline`` (section 12.3.4).

Other databases (SQLite, the embedded default): every word as a case-insensitive
substring (``icontains``, so ``anim`` also matches inside "reanimate"; SQLite folds
ASCII letters only), with no index; excerpts are a window around the first match made
in Python (:func:`window_excerpt`).

Excerpts are **plain text**, never HTML: matched words are wrapped in ``«`` and ``»``
(:data:`START_SEL`, :data:`STOP_SEL`), and any ``«``/``»`` already in the text is shown
as ``‹``/``›`` so the markers are unambiguous. Cut text is marked with ``…``. A client
escapes the excerpt like any other text before turning the markers into highlighting.

Every query is scoped to the owner first: no other user's message or title can match.

The plan of a message search (PostgreSQL)
-----------------------------------------
Two plans answer it, and the planner cannot tell which is cheap: it does not know how
rare a prefix is. Walking the owner's history index newest first and testing each row
stops as soon as a page is full: quick for a common word (14 ms for "python" and a user
with 600,000 messages, 1M rows, ``mpai_benchmark history``), but for a word in no
message it computes ``to_tsvector`` of *every* message of the user (19 s). The GIN index
finds the matching rows of the whole table first, at a cost in proportion to the word's
frequency (0.04 ms for the missing word, 0.3 s for "python", 0.9 s for "the").

So for a user with more than :data:`OWNER_SCAN_MAX_MESSAGES` messages (the per-user
counter), :func:`bounded_search` gives the walk :data:`WALK_TIMEOUT_MS` (a
``statement_timeout`` inside a savepoint), and when it runs out, asks again with plain
index scans off (``enable_indexscan``), so through the GIN index: a word common enough
for the walk to be slow there is rare enough for the GIN index to be quick. Everyone
else keeps the planner's choice, bounded by their own few messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import OperationalError, connections, router, transaction
from django.db.models import F, Func, QuerySet, TextField, Value

from mpai.models import Conversation, Message

#: The PostgreSQL text search configuration of the query and of the indexes.
TS_CONFIG = "simple"
#: Marker before a matched word in an excerpt.
START_SEL = "«"
#: Marker after a matched word in an excerpt.
STOP_SEL = "»"
#: Between two fragments of one excerpt, and at a cut end of a window excerpt.
ELLIPSIS = "…"
#: Longest accepted ``q``, in characters (the API answers 400 beyond it).
MAX_QUERY_CHARS = 200
#: Up to this many messages, a user's search may test each of them in history order.
OWNER_SCAN_MAX_MESSAGES = 2000
#: How long (ms) a larger user's search may walk their history before the GIN index.
WALK_TIMEOUT_MS = 50

T = TypeVar("T")

#: Most conversation titles returned for one query.
TITLE_LIMIT = 10

_WORD = re.compile(r"[^\W_]+")
# Characters kept before and after the first match in a window excerpt.
_WINDOW_BEFORE = 60
_WINDOW_AFTER = 160
_MARKERS = str.maketrans({START_SEL: "‹", STOP_SEL: "›"})


def search_terms(q: str) -> list[str]:
    """The words of ``q``: lower-cased runs of letters and digits, first occurrence
    order, duplicates dropped. ``[]`` when ``q`` has none (then nothing matches)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(q.lower()):
        seen.setdefault(word, None)
    return list(seen)


def tsquery_text(terms: list[str]) -> str:
    """The ``to_tsquery`` input for ``terms``: each a quoted prefix, all required,
    e.g. ``'machine':* & 'learn':*``. ``terms`` come from :func:`search_terms` (letters
    and digits only, so nothing in them needs escaping)."""
    return " & ".join(f"'{term}':*" for term in terms)


def database_vendor() -> str:
    """The vendor (``"postgresql"``, ``"sqlite"``, …) of the database messages are read
    from (the router's choice for :class:`~mpai.models.Message`)."""
    return connections[router.db_for_read(Message)].vendor


def bounded_search(user: Any, evaluate: Callable[[], T], *, using: str | None = None) -> T:
    """Return ``evaluate()``, which runs a :func:`search_messages` query, with the plan
    chosen as the module docstring says (PostgreSQL, a user with more than
    :data:`OWNER_SCAN_MAX_MESSAGES` messages); elsewhere just ``evaluate()``.

    ``evaluate`` may run twice (the second time through the GIN index), so it must
    only read. Costs one primary-key read of the user's message counter
    (:class:`~mpai.models.HistoryCount`). ``using``: the database alias (default: the
    router's for reading messages).

    Raises:
        whatever ``evaluate`` raises, but the walk's ``statement_timeout``
        (PostgreSQL's ``query_canceled``, Django's ``OperationalError``), which is
        what sends the query to the GIN index.
    """
    from mpai.models import HistoryCount

    alias = using or router.db_for_read(Message)
    if connections[alias].vendor != "postgresql":
        return evaluate()
    counted = HistoryCount.objects.using(alias).filter(owner_id=user.pk)
    if (counted.values_list("messages", flat=True).first() or 0) <= OWNER_SCAN_MAX_MESSAGES:
        return evaluate()
    with transaction.atomic(using=alias):
        try:
            with transaction.atomic(using=alias):  # a savepoint: the timeout undoes it
                _set_local(alias, "statement_timeout", f"{int(WALK_TIMEOUT_MS)}ms")
                result = evaluate()
                _set_local(alias, "statement_timeout", "0")
                return result
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "57014":  # query_canceled
                raise
        _set_local(alias, "enable_indexscan", "off")
        try:
            return evaluate()
        finally:
            _set_local(alias, "enable_indexscan", "on")


def _set_local(alias: str, name: str, value: str) -> None:
    """``SET LOCAL name = value`` (to the end of the transaction or savepoint)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SET LOCAL {name} = '{value}'")


def search_messages(user: Any, q: str, *, vendor: str | None = None) -> QuerySet[Message]:
    """The ``user``'s messages (both roles, any status) whose content matches ``q``.

    Returns a lazy queryset ordered newest first (``-created_at``, ``-id``, the order
    of ``mpai_msg_owner_created_idx``), with ``conversation`` selected; on PostgreSQL
    each row carries ``excerpt`` (``ts_headline``, up to 2 fragments of at most 30
    words). Use :func:`message_excerpt` for the excerpt on any database.

    ``vendor`` forces the PostgreSQL (``"postgresql"``) or portable (anything else)
    query; by default the database's own. An empty word list matches nothing.
    """
    terms = search_terms(q)
    base = Message.objects.filter(owner=user)
    if not terms:
        return base.none()
    vendor = vendor or database_vendor()
    if vendor == "postgresql":
        qs = _postgres_matches(base, "content", terms, highlight_all=False)
    else:
        qs = base
        for term in terms:
            qs = qs.filter(content__icontains=term)
    return qs.select_related("conversation").order_by("-created_at", "-id")


def search_conversations(
    user: Any, q: str, *, limit: int = TITLE_LIMIT, vendor: str | None = None
) -> list[Conversation]:
    """Up to ``limit`` of the ``user``'s conversations whose title matches ``q``, most
    recently active first (``-updated_at``, ``-id``).

    Each returned conversation has ``excerpt``: the whole title with the matches marked.
    ``vendor`` as for :func:`search_messages`.
    """
    terms = search_terms(q)
    if not terms:
        return []
    vendor = vendor or database_vendor()
    base = Conversation.objects.filter(owner=user)
    if vendor == "postgresql":
        qs = _postgres_matches(base, "title", terms, highlight_all=True)
    else:
        qs = base
        for term in terms:
            qs = qs.filter(title__icontains=term)
    conversations = list(qs.order_by("-updated_at", "-id")[:limit])
    for conversation in conversations:
        if getattr(conversation, "excerpt", None) is None:
            conversation.excerpt = mark_terms(conversation.title.translate(_MARKERS), terms)
    return conversations


def message_excerpt(message: Message, terms: list[str]) -> str:
    """The excerpt of a message from :func:`search_messages`: its ``ts_headline``
    annotation when present, else :func:`window_excerpt` of its content."""
    excerpt = getattr(message, "excerpt", None)
    if excerpt is not None:
        return str(excerpt)
    return window_excerpt(message.content, terms)


def window_excerpt(text: str, terms: list[str]) -> str:
    """About 220 characters of ``text`` around the first case-insensitive occurrence of
    any of ``terms``, cut at whitespace, with ``…`` at a cut end and every occurrence
    inside marked ``«…»``. Without an occurrence, the start of ``text``."""
    text = text.translate(_MARKERS)
    pattern = _terms_pattern(terms)
    found = pattern.search(text) if pattern else None
    start = max(0, found.start() - _WINDOW_BEFORE) if found else 0
    end = min(len(text), (found.end() if found else 0) + _WINDOW_AFTER)
    if start > 0:
        space = text.find(" ", start, found.start() if found else start)
        start = space + 1 if space != -1 else start
    if end < len(text):
        space = text.rfind(" ", found.end() if found else start, end)
        end = space if space != -1 else end
    window = mark_terms(text[start:end].strip(), terms)
    prefix = f"{ELLIPSIS} " if start > 0 else ""
    suffix = f" {ELLIPSIS}" if end < len(text) else ""
    return f"{prefix}{window}{suffix}"


def mark_terms(text: str, terms: list[str]) -> str:
    """``text`` with every case-insensitive occurrence of any of ``terms`` wrapped in
    ``«`` and ``»`` (``text`` is expected to hold no markers already)."""
    pattern = _terms_pattern(terms)
    if pattern is None:
        return text
    return pattern.sub(lambda match: f"{START_SEL}{match.group(0)}{STOP_SEL}", text)


def _terms_pattern(terms: list[str]) -> re.Pattern[str] | None:
    if not terms:
        return None
    # Longest first, so "learning" wins over "learn" at the same place.
    alternatives = sorted((re.escape(term) for term in terms), key=len, reverse=True)
    return re.compile("|".join(alternatives), re.IGNORECASE)


class _ToTsVector(Func):
    """``to_tsvector('simple'::regconfig, <column>)``: the indexed expression, verbatim."""

    template = f"to_tsvector('{TS_CONFIG}'::regconfig, %(expressions)s)"

    def __init__(self, expression: Any) -> None:
        from django.contrib.postgres.search import SearchVectorField

        super().__init__(expression, output_field=SearchVectorField())


def _postgres_matches(
    base: QuerySet[Any], column: str, terms: list[str], *, highlight_all: bool
) -> QuerySet[Any]:
    # Imported here: django.contrib.postgres needs psycopg, which a SQLite site may lack.
    from django.contrib.postgres.search import SearchHeadline, SearchQuery

    query = SearchQuery(tsquery_text(terms), config=TS_CONFIG, search_type="raw")
    # The text with any marker character already in it replaced, then highlighted.
    source = Func(
        F(column), Value("«»"), Value("‹›"), function="translate", output_field=TextField()
    )
    options: dict[str, Any] = (
        {"highlight_all": True}
        if highlight_all
        else {
            "max_words": 30,
            "min_words": 12,
            "max_fragments": 2,
            "fragment_delimiter": f" {ELLIPSIS} ",
        }
    )
    headline = SearchHeadline(
        source, query, config=TS_CONFIG, start_sel=START_SEL, stop_sel=STOP_SEL, **options
    )
    return (
        base.alias(_document=_ToTsVector(F(column)))
        .filter(_document=query)
        .annotate(excerpt=headline)
    )
