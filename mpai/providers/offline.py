"""The offline provider: real-looking streamed replies with no network.

Used by the embedded default (``make run``), by benchmarks and by load tests. It
reads no file outside the package unless pointed at a corpus.

Replies are chosen deterministically: with ``reply`` set, always that text; with
``corpus`` set (a JSON-lines file shaped like ``shared/data/conversations.jsonl``:
``{"turns": [{"role", "content"}, ...]}``), the assistant turn that followed the same
user turn in the corpus, when there is one; otherwise a packaged reply (from the
Apache-2.0 oasst1 and arena-hard-auto records, see ``data/ATTRIBUTION.md``) picked by a
stable hash (SHA-256) of the last user message.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from .base import ChatProvider, ChatRequest, ChatStream, StreamChunk, Usage

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


class OfflineStream(ChatStream):
    """Streams ``text`` word by word with the configured pacing; ``close()`` stops it."""

    def __init__(
        self, text: str, *, prompt_tokens: int, first_token_s: float, token_interval_s: float
    ) -> None:
        # Tokens are found as they are sent: a list of every piece of a long reply would
        # cost about 50 bytes of object header per piece.
        self._text = text
        self._prompt_tokens = prompt_tokens
        self._first_token_s = first_token_s
        self._interval_s = token_interval_s
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[StreamChunk]:
        if self._first_token_s > 0 and self._closed.wait(self._first_token_s):
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
        yield StreamChunk(
            finish_reason="stop",
            usage=Usage(
                self._prompt_tokens, completion_tokens, self._prompt_tokens + completion_tokens
            ),
        )

    def close(self) -> None:
        self._closed.set()


class OfflineProvider(ChatProvider):
    """A provider that answers from packaged text, paced like a real model.

    Options:
        first_token_ms: delay before the first delta, ms (default 300).
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
        replies = packaged_replies()
        if self.corpus:
            answers, corpus_replies = load_corpus(self.corpus)
            if prompt in answers:
                return answers[prompt]
            replies = corpus_replies or replies
        digest = hashlib.sha256(prompt.encode("utf-8")).digest()
        return replies[int.from_bytes(digest[:8], "big") % len(replies)]

    def open_stream(self, request: ChatRequest) -> ChatStream:
        prompt_tokens = sum(rough_token_count(m.get("content", "")) + 4 for m in request.messages)
        return OfflineStream(
            self.reply_for(request),
            prompt_tokens=prompt_tokens,
            first_token_s=self.first_token_s,
            token_interval_s=self.token_interval_s,
        )
