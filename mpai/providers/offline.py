"""The offline provider: real-looking streamed replies with no network.

Used by the embedded default (``make run``), by benchmarks and by load tests. It
reads no file outside the package unless pointed at a corpus.

Replies are chosen deterministically (same messages, same reply), first match wins:

1. ``reply`` set: always that text.
2. A title request (:data:`mpai.chat.titles.TITLE_INSTRUCTIONS` as the system message,
   alone or batched by :func:`mpai.chat.batch.ask_batched`): a title of at most six
   words, title case, made from the key words of the conversation's first message.
3. ``corpus`` set (a JSON-lines file shaped like ``shared/data/conversations.jsonl``:
   ``{"turns": [{"role", "content"}, ...]}``) and the same user turn is in it: the
   assistant turn that followed it.
4. The system message carries context the question is about (:func:`context_reply`):
   an answer composed from it, in Markdown.
5. Otherwise a reply picked by a stable hash (SHA-256) of the last user message from
   the corpus, or from the packaged replies (the Apache-2.0 oasst1 and arena-hard-auto
   records, see ``data/ATTRIBUTION.md``).

Tools (``request.tools``, OpenAI function calling), before 3 when offered:

- the request holds tool results after the last user message (the follow-up of a
  round of calls): the answer is composed from them (:func:`tool_results_reply`);
- else the offered tools whose trigger (:data:`TOOL_TRIGGERS`) matches the question
  are called, all in one reply with ``finish_reason`` ``"tool_calls"`` and no text:
  ``get_my_memberships`` for the user's own membership, plan, subscription or
  renewal, ``list_plans`` for plans, prices, upgrades or the annual plan,
  ``search_help_articles`` (``{"query": <the question>}``) for how-to and help
  questions (resetting, cancelling, payments). Call ids are stable: ``call_`` and
  the first 24 hex digits of a SHA-256 of the question and the tool's name.

The context format recognised (what :func:`mpai.chat.sections.render` writes): the
system message holds sections, each a ``## <Heading>`` line followed by its text up to
the next ``## `` line. A section whose heading names help, articles, FAQ or guides
holds articles, each a ``### <Title>`` line and its body (with no ``###`` line, each
paragraph is an article). Otherwise a section whose heading names a membership, plan
or subscription describes the user's plan: ``key: value`` lines (a ``plan`` or
``name`` key names it, a ``price`` or ``cost`` key prices it) and ``- `` bullet lines
(listed under the ``key:`` line before them).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from .base import ChatProvider, ChatRequest, ChatStream, StreamChunk, ToolCall, Usage

_TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")


def rough_token_count(text: str) -> int:
    """Estimate tokens as one per four characters (at least one for non-empty text)."""
    return (len(text) + 3) // 4


@functools.cache
def packaged_replies() -> tuple[str, ...]:
    """Return the replies shipped in ``mpai/providers/data/offline_replies.json``."""
    raw = resources.files("mpai.providers").joinpath("data/offline_replies.json").read_text("utf-8")
    return tuple(record["reply"] for record in json.loads(raw)["replies"])


@functools.cache
def load_corpus(path: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Load a conversations JSON-lines file.

    Returns:
        ``(answers, replies)``: user turn → the assistant turn after it, and every
        assistant turn in file order.
    """
    answers: dict[str, str] = {}
    replies: list[str] = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            turns = json.loads(line).get("turns", [])
            for prev, turn in itertools.pairwise(turns):
                if turn.get("role") == "assistant":
                    replies.append(turn["content"])
                    if prev.get("role") == "user":
                        answers.setdefault(prev["content"], turn["content"])
    return answers, tuple(replies)


# --- replies composed from the context --------------------------------------------------

_SECTION_RE = re.compile(r"^## +(?P<heading>\S.*?)\s*$", re.MULTILINE)
_ARTICLE_RE = re.compile(r"^### +(?P<title>\S.*?)\s*$", re.MULTILINE)
_KEY_VALUE_RE = re.compile(r"^(?P<key>[A-Za-z][\w /-]{0,40}?)\s*:\s*(?P<value>.*)$")
_BULLET_RE = re.compile(r"^\s*[-*+]\s+(?P<item>\S.*)$")
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“(])")

_HELP_HEADING = re.compile(r"\b(help|articles?|faqs?|guides?|knowledge|how-?tos?)\b", re.I)
_MEMBERSHIP_HEADING = re.compile(r"\b(member\w*|plans?|subscriptions?|tiers?)\b", re.I)
#: A question about the user's own plan: what it is, holds, costs or when it renews.
_MEMBERSHIP_ASK = re.compile(
    r"\b(includ\w*|benefits?|perks?|what do i get|what(?:'s| is) in my"
    r"|(?:which|what) (?:plan|membership|subscription|tier)"
    r"|what(?:'s| is) my (?:plan|membership|subscription|tier)"
    r"|am i (?:on|paying|subscribed)|do i (?:have|pay)|how much do i pay"
    r"|my (?:plan|membership|subscription) (?:cost|renew|include|cover|give)\w*"
    r"|when (?:does|will|do) (?:my|i) \w* ?renew)\b",
    re.I,
)
#: A how-to question, or a wish to do something.
_HOW_TO = re.compile(
    r"\b(how|can i|could i|may i|where|is it possible|i(?:'d| would)? (?:like|want|need) to"
    r"|help me|steps?|way to|what happens)\b",
    re.I,
)
#: A short follow-up that continues the previous question ("and the annual one?").
_FOLLOW_UP = re.compile(r"^\s*(and|also|what about|how about|or)\b", re.I)

#: Words that say little about what a question is about.
_STOP_TEXT = """a about after again all also am an and any are as at be been before being but by
    can could did do does doing done for from get gets getting give go had has have
    having he her here hi hello hey his how i i'd i'm if in into is it it's its just
    know let me more most much my need no not now of off on once one only or other our
    out own please same she should so some such tell than thank thanks that the their
    them then there these they this those through to too up us very want was way we
    well were what what's when where which while who why will with would you your
    yours"""
STOP_WORDS = frozenset(_STOP_TEXT.split())

#: BM25 (Okapi) parameters of the article ranking.
BM25_K1 = 1.5
BM25_B = 0.75


def _stem(word: str) -> str:
    """A crude English stem, enough to match "upgrading" with "upgrade"."""
    for suffix in ("ing", "ed", "es", "al", "s", "e"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            if suffix == "s" and word.endswith("ss"):
                continue
            word = word[: -len(suffix)]
            if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiou":
                word = word[:-1]  # "cancelling" → "cancel"
            break
    return word


def terms(text: str) -> list[str]:
    """The stemmed, lowercased content words of ``text``, in order (repeats kept)."""
    words = (w.replace("’", "'") for w in _WORD_RE.findall(text.lower()))
    return [_stem(w) for w in words if w not in STOP_WORDS and len(w) > 1]


def context_sections(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """The ``(heading, text)`` sections of the system messages, in order.

    A section is a ``## <Heading>`` line and the text after it up to the next ``## ``
    line (text before the first heading, the system prompt, is no section).
    """
    found: list[tuple[str, str]] = []
    for message in messages:
        if message.get("role") != "system":
            continue
        content = message.get("content") or ""
        heads = list(_SECTION_RE.finditer(content))
        for head, following in itertools.zip_longest(heads, heads[1:]):
            end = following.start() if following else len(content)
            found.append((head["heading"], content[head.end() : end].strip()))
    return found


def parse_articles(text: str) -> list[tuple[str, str]]:
    """``(title, body)`` of each ``### <Title>`` block of ``text``.

    Without a ``###`` line, each paragraph is an article: its first line is the title
    when it has more than one line, else its first sentence.
    """
    heads = list(_ARTICLE_RE.finditer(text))
    if heads:
        return [
            (head["title"], text[head.end() : following.start() if following else None].strip())
            for head, following in itertools.zip_longest(heads, heads[1:])
        ]
    articles = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines = paragraph.strip().splitlines()
        if not lines:
            continue
        if len(lines) > 1:
            articles.append((lines[0].strip(), "\n".join(lines[1:]).strip()))
        else:
            articles.append((_SENTENCE_RE.split(lines[0].strip(), 1)[0], lines[0].strip()))
    return articles


def parse_membership(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``(fields, lists)`` of a membership section.

    ``fields``: ``key: value`` lines with a value, keys lowercased, in order. ``lists``:
    bullet lines under the ``key:`` line before them (key ``""`` for bullets before any
    key); a ``key: value`` line with no bullets after it is no list.
    """
    fields: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        bullet = _BULLET_RE.match(line)
        if bullet:
            lists.setdefault(current, []).append(bullet["item"].strip())
            continue
        pair = _KEY_VALUE_RE.match(line.strip())
        if pair:
            current = pair["key"].strip().lower()
            if pair["value"].strip():
                fields[current] = pair["value"].strip()
        elif line.strip():
            lists.setdefault(current, []).append(line.strip())
    return fields, lists


def rank_articles(query: str, articles: list[tuple[str, str]]) -> list[tuple[float, int]]:
    """``(score, index)`` of the articles sharing a word with ``query``, best first.

    Scored by BM25 (Okapi, :data:`BM25_K1`, :data:`BM25_B`, a never-negative IDF) on the
    title (counted twice) and the body. An article counts as a match only when a query
    word is in its title or two are in its body. Ties keep the articles' order.
    """
    wanted = list(dict.fromkeys(terms(query)))
    if not wanted or not articles:
        return []
    docs = [terms(f"{title} {title} {body}") for title, body in articles]
    titles = [set(terms(title)) for title, _ in articles]
    average = sum(map(len, docs)) / len(docs) or 1.0
    count = len(docs)
    ranked: list[tuple[float, int]] = []
    for index, doc in enumerate(docs):
        in_title = titles[index].intersection(wanted)
        in_body = set(doc).intersection(wanted)
        if not in_title and len(in_body) < 2:
            continue
        score = 0.0
        for term in wanted:
            freq = doc.count(term)
            if not freq:
                continue
            having = sum(1 for other in docs if term in other)
            idf = math.log(1 + (count - having + 0.5) / (having + 0.5))
            norm = BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / average)
            score += idf * freq * (BM25_K1 + 1) / (freq + norm)
        ranked.append((score, index))
    ranked.sort(key=lambda pair: (-pair[0], pair[1]))
    return ranked


def _bullets(body: str) -> list[str]:
    """The body of an article as bullet items: its own bullets, else its sentences."""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    items: list[str] = []
    for line in lines:
        bullet = _BULLET_RE.match(line)
        items.extend([bullet["item"]] if bullet else _SENTENCE_RE.split(line))
    return [item.strip() for item in items if item.strip()]


def _membership_reply(text: str) -> str:
    fields, lists = parse_membership(text)
    plan = next((fields.pop(k) for k in ("plan", "name", "membership", "tier") if k in fields), "")
    price = next((fields.pop(k) for k in list(fields) if k in ("price", "cost")), "")
    if plan:
        intro = f"You're on the **{plan}** plan" + (f" ({price})" if price else "") + "."
        intro += " Here's what it includes:" if any(lists.values()) else ""
    else:
        intro = "Here's what I have on your membership:"
        if price:
            fields = {"price": price, **fields}
    items = [item for values in lists.values() for item in values]
    items += [f"**{key[:1].upper()}{key[1:]}:** {value}" for key, value in fields.items()]
    return "\n".join([intro, "", *(f"- {item}" for item in items)]).rstrip()


def _article_reply(title: str, body: str) -> str:
    items = _bullets(body) or [title]
    return "\n".join([f"From the help article **{title}**:", "", *(f"- {i}" for i in items)])


def context_reply(messages: list[dict[str, str]]) -> str | None:
    """Answer the last user message from the context of the system messages, or None.

    Sections are found by :func:`context_sections` (the format is in the module
    docstring). A question about the user's own plan (what it includes, costs, when it
    renews) is answered from the membership section: the plan, its price, then its
    bullets and other fields as Markdown bullet points. A how-to question (or any other
    question the articles match, :func:`rank_articles`) is answered with the best
    article's body as bullet points. A question with both gets both. A short follow-up
    ("and the annual one?") is read together with the user message before it.

    Returns:
        The Markdown reply, or None when the context does not cover the question.
    """
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    if not users:
        return None
    question = users[-1]
    if len(users) > 1 and _FOLLOW_UP.match(question) and len(terms(question)) <= 4:
        question = f"{users[-2]} {question}"
    membership = articles = None
    for heading, text in context_sections(messages):
        if not text:
            continue
        if _HELP_HEADING.search(heading):
            articles = articles if articles is not None else parse_articles(text)
        elif _MEMBERSHIP_HEADING.search(heading):
            membership = membership if membership is not None else text
    parts: list[str] = []
    asks_membership = bool(_MEMBERSHIP_ASK.search(question))
    how = _HOW_TO.search(question)
    if membership is not None and asks_membership:
        parts.append(_membership_reply(membership))
    if articles and (how or not asks_membership):
        wanted = question[how.start() :] if how and asks_membership else question
        ranked = rank_articles(wanted, articles)
        if ranked:
            parts.append(_article_reply(*articles[ranked[0][1]]))
    return "\n\n".join(parts) or None


# --- tools -------------------------------------------------------------------------------

#: Which offered tool a question calls, in this order (see the module docstring).
TOOL_TRIGGERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "get_my_memberships",
        re.compile(
            r"\bmy (?:\w+ )?(?:membership|plan|subscription|tier)s?\b|\brenew\w*"
            r"|\bam i (?:on|subscribed|a member)\b",
            re.I,
        ),
    ),
    (
        "list_plans",
        re.compile(r"\b(?:plans|pric\w*|upgrad\w*|annual|yearly|tiers|cost\w*)\b", re.I),
    ),
    (
        "search_help_articles",
        re.compile(
            r"\bhow (?:do|can|could|should) i\b|\bhelp\b|\breset\w*|\bcancel\w*"
            r"|\bpayment\w*|\brefund\w*|\bpassword\b",
            re.I,
        ),
    ),
)


def offered_tool_names(request: ChatRequest) -> list[str]:
    """The function names of ``request.tools``, in order."""
    names = []
    for entry in request.tools or []:
        function = entry.get("function") if isinstance(entry, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def _since_last_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for position in range(len(messages) - 1, -1, -1):
        if messages[position].get("role") == "user":
            return messages[position + 1 :]
    return messages


def tool_calls_for(request: ChatRequest) -> tuple[ToolCall, ...]:
    """The calls the offline model makes for ``request`` (see the module docstring):
    none when no tool is offered, when tool results already follow the question, or
    when no offered tool's trigger matches it."""
    offered = offered_tool_names(request)
    if not offered or any(m.get("role") == "tool" for m in _since_last_user(request.messages)):
        return ()
    question = next(
        (m.get("content") or "" for m in reversed(request.messages) if m.get("role") == "user"),
        "",
    )
    calls = []
    for name, trigger in TOOL_TRIGGERS:
        if name not in offered or not trigger.search(question):
            continue
        arguments = {"query": question[:500]} if name == "search_help_articles" else {}
        digest = hashlib.sha256(f"{question}\0{name}".encode()).hexdigest()[:24]
        calls.append({"id": f"call_{digest}", "name": name, "arguments": json.dumps(arguments)})
    return tuple(calls)


def _long_date(value: Any) -> Any:
    """``"2027-01-04"`` (a tool's JSON date) as ``"4 January 2027"``; other values as
    they are."""
    if isinstance(value, str):
        try:
            day = datetime.date.fromisoformat(value[:10])
        except ValueError:
            return value
        return f"{day.day} {day:%B %Y}"
    return value


def _membership_lines(value: dict[str, Any]) -> list[str]:
    memberships = [m for m in value.get("memberships") or [] if isinstance(m, dict)]
    if not memberships:
        return ["I found no membership on your account."]
    lines: list[str] = []
    for membership in memberships:
        plan = membership.get("plan") or membership.get("name") or "your"
        price = membership.get("price")
        intro = f"You're on the **{plan}** plan" + (f" ({price})" if price else "") + "."
        status, renews = membership.get("status"), _long_date(membership.get("renews_at"))
        if status:
            intro += f" Its status is {status}"
            intro += f" and it renews on {renews}." if renews else "."
        elif renews:
            intro += f" It renews on {renews}."
        lines.append(intro)
        benefits = [str(b) for b in membership.get("benefits") or []]
        if benefits:
            lines += ["", "It includes:", "", *(f"- {b}" for b in benefits)]
    return lines


def _plan_lines(value: dict[str, Any]) -> list[str]:
    plans = [p for p in value.get("plans") or [] if isinstance(p, dict)]
    if not plans:
        return ["I found no plans on offer."]
    lines = ["The plans on offer:", ""]
    for plan in plans:
        line = f"- **{plan.get('name')}**" + (f": {plan['price']}" if plan.get("price") else "")
        benefits = [str(b) for b in plan.get("benefits") or []]
        if benefits:
            line += f" ({'; '.join(benefits)})"
        lines.append(line)
    return lines


def _article_lines(value: dict[str, Any]) -> list[str]:
    articles = [a for a in value.get("articles") or [] if isinstance(a, dict)]
    if not articles:
        return ["I found no help article about that."]
    best = articles[0]
    title = str(best.get("title") or "Help")
    lines = _article_reply(title, str(best.get("excerpt") or "")).splitlines()
    if best.get("url"):
        lines += ["", f"More: {best['url']}"]
    others = [str(a.get("title")) for a in articles[1:] if a.get("title")]
    if others:
        lines += ["", "Related: " + ", ".join(f"**{t}**" for t in others)]
    return lines


def tool_results_reply(messages: list[dict[str, Any]]) -> str | None:
    """The answer composed from the tool results after the last user message, or None
    when there are none.

    Results are the ``tool`` messages (``content`` the tool's JSON), matched to their
    calls' names by ``tool_call_id`` through the assistant messages' ``tool_calls``
    (OpenAI Chat Completions). ``memberships``, ``plans`` and ``articles`` results are
    written out in Markdown; an error result says the look-up failed and why.
    """
    recent = _since_last_user(messages)
    names = {
        call.get("id"): (call.get("function") or {}).get("name")
        for message in recent
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
        if isinstance(call, dict)
    }
    parts: list[str] = []
    for message in recent:
        if message.get("role") != "tool":
            continue
        name = names.get(message.get("tool_call_id")) or "the tool"
        try:
            value = json.loads(message.get("content") or "null")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            parts.append(f"I could not read what {name} answered.")
        elif isinstance(value.get("error"), dict):
            why = value["error"].get("message") or value["error"].get("code") or "an error"
            parts.append(f"I could not look that up with {name}: {why}")
        elif "memberships" in value:
            parts.append("\n".join(_membership_lines(value)))
        elif "plans" in value:
            parts.append("\n".join(_plan_lines(value)))
        elif "articles" in value:
            parts.append("\n".join(_article_lines(value)))
        else:
            facts = [f"- **{key}:** {json.dumps(item, default=str)}" for key, item in value.items()]
            parts.append("\n".join([f"Here is what {name} found:", "", *facts]))
    return "\n\n".join(parts) or None


# --- titles -------------------------------------------------------------------------------

#: A title request's question (``mpai.chat.titles``): the first exchange, quoted.
_TITLE_QUESTION = re.compile(r'^The user wrote: "(?P<user>.*)" The assistant replied: "', re.S)
#: A batched request (``mpai.chat.batch.BATCH_PROMPT``): numbered questions after this.
_BATCH_QUESTIONS = re.compile(r"^Answer each numbered question.*?\nQuestions:\n", re.S)
_NUMBERED = re.compile(r"^(\d{1,4})\. (.*)$", re.MULTILINE)
#: Words :func:`title_from` leaves out besides :data:`STOP_WORDS`.
_TITLE_SKIP_TEXT = "best way ways anyone someone something thing things"
_TITLE_STOP = STOP_WORDS | frozenset(_TITLE_SKIP_TEXT.split())
TITLE_WORDS = 6


def title_from(text: str) -> str:
    """A title of at most :data:`TITLE_WORDS` words, title case, from ``text``.

    The first distinct content words of ``text`` (question words, pronouns and other
    :data:`STOP_WORDS` left out); the first words of ``text`` when none is left.
    """
    words = _WORD_RE.findall(text)
    picked = [w for w in words if w.lower().replace("’", "'") not in _TITLE_STOP]
    seen: set[str] = set()
    title: list[str] = []
    for word in picked or words:
        if word.lower() in seen:
            continue
        seen.add(word.lower())
        title.append(word if word[1:] != word[1:].lower() else word[:1].upper() + word[1:])
        if len(title) == TITLE_WORDS:
            break
    return " ".join(title) or "New conversation"


def _is_title_request(messages: list[dict[str, str]]) -> bool:
    system = " ".join(m.get("content") or "" for m in messages if m.get("role") == "system")
    return "title" in system.lower()


def _title_answer(question: str) -> str | None:
    match = _TITLE_QUESTION.match(question.strip())
    return title_from(match["user"]) if match else None


class OfflineStream(ChatStream):
    """Streams ``text`` word by word with the configured pacing; ``close()`` stops it."""

    def __init__(
        self,
        text: str,
        *,
        prompt_tokens: int,
        first_token_s: float,
        token_interval_s: float,
        tool_calls: tuple[ToolCall, ...] = (),
    ) -> None:
        # Tokens are found as they are sent: a list of every piece of a long reply would
        # cost about 50 bytes of object header per piece.
        self._text = text
        self._tool_calls = tool_calls
        self._prompt_tokens = prompt_tokens
        self._first_token_s = first_token_s
        self._interval_s = token_interval_s
        self._closed = threading.Event()
        # Like a real server, the model starts when the request arrives (open_stream),
        # not when the client starts reading.
        self._opened_at = time.monotonic()

    def __iter__(self) -> Iterator[StreamChunk]:
        wait_s = self._first_token_s - (time.monotonic() - self._opened_at)
        if wait_s > 0 and self._closed.wait(wait_s):
            return
        sent = 0
        for index, match in enumerate(_TOKEN_RE.finditer(self._text)):
            if self._closed.is_set():
                return
            if index and self._interval_s > 0 and self._closed.wait(self._interval_s):
                return
            sent = match.end()
            yield StreamChunk(text=match.group())
        completion_tokens = rough_token_count(self._text[:sent])
        completion_tokens += sum(
            rough_token_count(call["name"] + call["arguments"]) for call in self._tool_calls
        )
        yield StreamChunk(
            finish_reason="tool_calls" if self._tool_calls else "stop",
            usage=Usage(
                self._prompt_tokens, completion_tokens, self._prompt_tokens + completion_tokens
            ),
            tool_calls=self._tool_calls,
        )

    def close(self) -> None:
        self._closed.set()


class OfflineProvider(ChatProvider):
    """A provider that answers from packaged text, paced like a real model.

    Options:
        first_token_ms: delay from the request (``open_stream``) to the first delta, ms
            (default 300).
        tokens_per_second: pace of the following deltas (default 40; 0 = no delay).
        reply: a fixed reply for every request (default None).
        corpus: path of a conversations JSON-lines file to replay (default None).
    """

    provider_name = "mpai.offline"

    def __init__(
        self,
        *,
        first_token_ms: float = 300,
        tokens_per_second: float = 40,
        reply: str | None = None,
        corpus: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.first_token_s = max(first_token_ms, 0) / 1000
        self.token_interval_s = 1 / tokens_per_second if tokens_per_second > 0 else 0.0
        self.reply = reply
        self.corpus = corpus

    def reply_for(self, request: ChatRequest) -> str:
        """Return the reply text for ``request`` (see the module docstring)."""
        if self.reply is not None:
            return self.reply
        prompt = next(
            (m["content"] for m in reversed(request.messages) if m.get("role") == "user"), ""
        )
        if _is_title_request(request.messages):
            titled = self._title_reply(prompt)
            if titled is not None:
                return titled
        if request.tools:
            answered = tool_results_reply(request.messages)
            if answered is not None:
                return answered
        if self.corpus:
            answers, _ = load_corpus(self.corpus)
            if prompt in answers:
                return answers[prompt]
        composed = context_reply(request.messages)
        if composed is not None:
            return composed
        return self._picked_reply(prompt)

    def _picked_reply(self, prompt: str) -> str:
        """A corpus (or packaged) reply picked by a stable hash of ``prompt``."""
        replies = packaged_replies()
        if self.corpus:
            replies = load_corpus(self.corpus)[1] or replies
        digest = hashlib.sha256(prompt.encode("utf-8")).digest()
        return replies[int.from_bytes(digest[:8], "big") % len(replies)]

    def _title_reply(self, prompt: str) -> str | None:
        """Titles for a title request: one, or numbered answers to a batched one."""
        batch = _BATCH_QUESTIONS.match(prompt)
        if batch is None:
            return _title_answer(prompt)
        answers = []
        for match in _NUMBERED.finditer(prompt[batch.end() :]):
            question = match[2]
            answer = _title_answer(question) or " ".join(self._picked_reply(question).split())
            answers.append(f"{match[1]}. {answer}")
        return "\n".join(answers) or None

    def open_stream(self, request: ChatRequest) -> ChatStream:
        """A stream of :meth:`reply_for`'s text, or of the tool calls the request gets
        (:func:`tool_calls_for`, when ``reply`` is not set; then no text)."""
        prompt_tokens = sum(rough_token_count(m.get("content") or "") + 4 for m in request.messages)
        calls = tool_calls_for(request) if self.reply is None else ()
        return OfflineStream(
            "" if calls else self.reply_for(request),
            prompt_tokens=prompt_tokens,
            first_token_s=self.first_token_s,
            token_interval_s=self.token_interval_s,
            tool_calls=calls,
        )
