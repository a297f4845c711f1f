"""Replies being generated, carried to resends in other processes through Redis Streams.

A resend of a reply still being generated (:mod:`mpai.chat.replay`) may reach another
worker process than the one writing it. The writer publishes its reply's text to one
Redis Stream per reply, ``mpai:reply:<site identity>:<message id>`` (the site's
identity, :mod:`mpai.site_identity`, so two sites on one Redis never read each other's
replies), and a resend reads it: the text so far at once, then the rest as it comes.

Entries of a stream, in order:

- ``{"s": "1"}``: the stream's start (its key exists from the first flush on);
- ``{"o": <offset>, "t": <text>}``: a batch of deltas, ``o`` the number of characters
  of the reply before it (a reader checks each batch follows the previous one);
- ``{"end": <status>}``: the reply is saved with that status.

Deltas are never sent one by one: :meth:`ReplyPublisher.write` only appends to a
buffer (no I/O on the delta path), and one daemon thread per process flushes every
buffer that has text once it is ``MPAI["REPLAY_BATCH_MS"]`` (100 ms) old, or at once
past :data:`BATCH_CHARS`, all of them in one pipelined round trip (an ``XADD`` per
stream). The stream's expiry, ``MPAI["REPLAY_STREAM_TTL_SECONDS"]`` (300 s), is set
by its first flush and renewed at its end and whenever a third of it has passed, so a
killed process leaves nothing for ever.

The Redis is the rate limiter's (``MPAI["RATE_LIMIT"]``: its ``REDIS_URL``, else its
``CACHE`` when that is django-redis or Django's RedisCache). Without one (the embedded
default) nothing is published and a resend polls the database. A Redis error marks
the publishers of the failed flush broken (they publish nothing more) and skips Redis
for ``RATE_LIMIT["OUTAGE_BACKOFF"]`` seconds; the reply itself goes on untouched, and
its resends fall back to the database.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from django.core.exceptions import ImproperlyConfigured
from redis import ConnectionPool, Redis
from redis.exceptions import RedisError

from mpai.conf import mpai_settings

logger = logging.getLogger(__name__)

#: Characters buffered by one publisher that make its flush immediate.
BATCH_CHARS = 16 * 1024
#: Longest blocking read of a follower (ms); it checks its turn between reads.
BLOCK_MS = 1000
#: Socket read timeout of a follower's blocking reads beyond the block itself (s).
READ_MARGIN_S = 1.0

_STREAMING = "streaming"

_down_lock = threading.Lock()
#: time.monotonic() before which no publisher starts (a flush failed: Redis is out).
_down_until = [0.0]


def reply_redis() -> Redis | None:
    """Return the redis-py client replies are published on, or None without a Redis.

    The rate limiter's client (``MPAI["RATE_LIMIT"]``): ``REDIS_URL`` when set, else the
    connection of its ``CACHE`` alias when that is a Redis cache. Never raises: a
    configuration the rate limiter refuses means no Redis here (logged).
    """
    from mpai.chat.ratelimit.redis_bucket import RedisTokenBucket
    from mpai.chat.ratelimit.service import get_rate_limiter

    try:
        limiter = get_rate_limiter()
        if isinstance(limiter, RedisTokenBucket):
            return limiter.client
    except (ImproperlyConfigured, RedisError, OSError):
        logger.warning("mpai reply streams: no usable Redis", exc_info=True)
    return None


def reply_stream_key(message_id: int, site: str) -> str:
    """Return the Redis key of reply ``message_id``'s stream on ``site``."""
    return f"mpai:reply:{site}:{message_id}"


def _key_for(message_id: int | None) -> tuple[Redis, str] | None:
    """The client and key of a reply's stream, or None (no Redis, no site identity)."""
    if message_id is None:
        return None
    from mpai.chat.scoped_cache import current_site

    client = reply_redis()
    if client is None:
        return None
    site = current_site()
    if site is None:
        return None
    return client, reply_stream_key(message_id, site)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _field(fields: dict[Any, Any], name: str) -> Any:
    if name in fields:
        return fields[name]
    return fields.get(name.encode())


# --- publishing ------------------------------------------------------------------------


class ReplyPublisher:
    """The stream of one reply being generated in this process.

    :meth:`write` and :meth:`close` are safe from any thread and never do I/O: the
    flusher thread sends the buffered text. Once broken (a Redis error), it publishes
    nothing more.

    Attributes:
        key: the stream's Redis key.
    """

    def __init__(self, client: Redis, key: str) -> None:
        self.client = client
        self.key = key
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._pending = 0  # characters in _parts
        self._offset = 0  # characters already handed to a flush
        self._started = False
        self._scheduled = False
        self._end: str | None = None
        self._end_sent = False
        self._expires_set_at = 0.0  # time.monotonic() of the last EXPIRE queued
        self.broken = False

    def write(self, text: str) -> None:
        """Buffer ``text``, the next delta of the reply (flushed within a batch window)."""
        if self.broken or not text:
            return
        with self._lock:
            if self._end is not None:
                return
            self._parts.append(text)
            self._pending += len(text)
            schedule = not self._scheduled
            self._scheduled = True
            urgent = self._pending >= BATCH_CHARS
        if schedule or urgent:
            _flusher.schedule(self, urgent=urgent)

    def close(self, status: str) -> None:
        """End the stream: the reply is saved with ``status``.

        The rest of the text and an ``end`` entry are flushed at once. A ``streaming``
        status (the turn stopped before its save) writes no ``end``: the stream just
        expires, and resends find the reply's fate in the database.
        """
        if self.broken:
            return
        with self._lock:
            if self._end is not None:
                return
            self._end = status
        _flusher.schedule(self, urgent=True)

    def _take(self, pipe: Any, ttl: int) -> bool:
        """Queue this publisher's commands on ``pipe``; return whether it queued any."""
        with self._lock:
            self._scheduled = False
            if self.broken or self._end_sent:
                return False
            text = "".join(self._parts)
            self._parts.clear()
            self._pending = 0
            offset, self._offset = self._offset, self._offset + len(text)
            started, self._started = self._started, True
            end = self._end
            self._end_sent = end is not None
        if not started:
            pipe.xadd(self.key, {"s": "1"})
        if text:
            pipe.xadd(self.key, {"o": offset, "t": text})
        if end is not None and end != _STREAMING:
            pipe.xadd(self.key, {"end": end})
        # The expiry is set by the first flush and renewed at the end and once a third
        # of it has passed, not on every flush: an EXPIRE per batch would double the
        # commands of a busy process.
        now = time.monotonic()
        if not started or end is not None or now - self._expires_set_at >= ttl / 3:
            self._expires_set_at = now
            pipe.expire(self.key, ttl)
        return True


def open_publisher(message_id: int | None) -> ReplyPublisher | None:
    """Return the publisher of reply ``message_id``'s stream, or None.

    None without a Redis (see the module docstring), without a site identity, or while
    Redis is known to be out. Never raises; no Redis I/O (its ``start`` entry goes out
    with the first flush, within ``MPAI["REPLAY_BATCH_MS"]``).
    """
    try:
        if time.monotonic() < _down_until[0]:
            return None
        target = _key_for(message_id)
    except Exception:
        logger.warning("mpai reply streams: not publishing this reply", exc_info=True)
        return None
    if target is None:
        return None
    publisher = ReplyPublisher(*target)
    _flusher.schedule(publisher, urgent=True)  # the start entry: the stream exists
    return publisher


def _mark_down(exc: BaseException) -> None:
    backoff = float(mpai_settings.RATE_LIMIT.get("OUTAGE_BACKOFF") or 1.0)
    with _down_lock:
        was_up = time.monotonic() >= _down_until[0]
        _down_until[0] = time.monotonic() + backoff
    if was_up:
        logger.warning(
            "mpai reply streams: Redis failed (%s: %s); resends poll the database",
            type(exc).__name__,
            exc,
        )


def _flush(publishers: list[ReplyPublisher]) -> None:
    """Send the buffered text of ``publishers``: one pipeline per Redis client."""
    ttl = max(int(mpai_settings.REPLAY_STREAM_TTL_SECONDS), 1)
    by_client: dict[int, list[ReplyPublisher]] = {}
    for publisher in publishers:
        by_client.setdefault(id(publisher.client), []).append(publisher)
    for group in by_client.values():
        if time.monotonic() < _down_until[0]:
            for publisher in group:
                publisher.broken = True
            continue
        pipe = group[0].client.pipeline(transaction=False)
        sending = [publisher for publisher in group if publisher._take(pipe, ttl)]
        if not sending:
            continue
        try:
            pipe.execute()
        except (RedisError, OSError) as exc:
            for publisher in sending:
                publisher.broken = True
            _mark_down(exc)


class _ReplyFlusher:
    """The daemon thread that flushes every publisher of this process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[ReplyPublisher, None] = {}  # an ordered set
        self._since = 0.0
        self._urgent = False
        self._thread: threading.Thread | None = None

    def schedule(self, publisher: ReplyPublisher, *, urgent: bool = False) -> None:
        with self._cond:
            if not self._due:
                self._since = time.monotonic()
            self._due[publisher] = None
            self._urgent = self._urgent or urgent
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="mpai-reply-stream", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                window = max(float(mpai_settings.REPLAY_BATCH_MS), 0.0) / 1000
                end = self._since + window
                while not self._urgent:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                due = list(self._due)
                self._due.clear()
                self._urgent = False
            try:
                _flush(due)
            except Exception:
                logger.exception("mpai reply streams: a flush failed")
                for publisher in due:
                    publisher.broken = True


_flusher = _ReplyFlusher()


# --- following -------------------------------------------------------------------------

_readers_lock = threading.Lock()
#: id(pool) -> (pool, client with a read timeout longer than BLOCK_MS).
_readers: dict[int, tuple[ConnectionPool, Redis]] = {}


def _blocking_client(client: Redis) -> tuple[Redis, int]:
    """A client on the same server for blocking reads, and its longest block (ms).

    A plain pool gets a twin whose read timeout outlasts :data:`BLOCK_MS`; another pool
    (Sentinel, cluster) is used as it is, with blocks shorter than its read timeout.
    """
    pool = client.connection_pool
    if type(pool) is not ConnectionPool:
        timeout = pool.connection_kwargs.get("socket_timeout")
        if not timeout:
            return client, BLOCK_MS
        return client, max(int(float(timeout) * 1000 * 0.8), 1)
    with _readers_lock:
        known = _readers.get(id(pool))
        if known is not None and known[0] is pool:
            return known[1], BLOCK_MS
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = BLOCK_MS / 1000 + READ_MARGIN_S
        reader = Redis(
            connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
        _readers[id(pool)] = (pool, reader)
        return reader, BLOCK_MS


class ReplyFollower:
    """Reads one reply's stream from its start, each entry once.

    Attributes:
        found: the stream exists (its first entry was read).
        ended: its ``end`` entry was read: the reply is saved.
        failed: it cannot be read any more (a Redis error, or a batch that does not
            follow the previous one, e.g. the stream expired and was created again);
            the rest of the reply is in the database once saved.
        chars: characters of the reply read so far.
    """

    def __init__(self, client: Redis, key: str) -> None:
        self.client = client
        self.key = key
        self._last: Any = "0-0"
        self.found = False
        self.ended = False
        self.failed = False
        self.chars = 0

    def read(self, block_ms: int | None = None) -> tuple[int, str]:
        """Read the entries after the last one read; return ``(offset, text)``.

        ``text`` is the batches' text joined (``""`` when none), ``offset`` the number of
        characters of the reply before it.

        Args:
            block_ms: wait up to this many ms for an entry (at most :data:`BLOCK_MS`;
                hold no database connection meanwhile); None returns at once.
        """
        offset = self.chars
        if self.failed or self.ended:
            return offset, ""
        try:
            if block_ms is None:
                reply = self.client.xread({self.key: self._last})
            else:
                reader, longest = _blocking_client(self.client)
                block = min(max(int(block_ms), 1), longest)
                reply = reader.xread({self.key: self._last}, block=block)
        except (RedisError, OSError):
            logger.warning("mpai reply streams: a read failed; polling instead", exc_info=True)
            self.failed = True
            return offset, ""
        parts: list[str] = []
        for _key, entries in cast(list[Any], reply or []):
            for entry_id, fields in entries:
                self.found = True
                self._last = entry_id
                if not self._take(fields, parts):
                    return offset, "".join(parts)
        return offset, "".join(parts)

    def _take(self, fields: dict[Any, Any], parts: list[str]) -> bool:
        text = _field(fields, "t")
        if text is not None:
            if int(_text(_field(fields, "o"))) != self.chars:
                self.failed = True  # a gap: what follows is not the next text
                return False
            piece = _text(text)
            parts.append(piece)
            self.chars += len(piece)
        if _field(fields, "end") is not None:
            self.ended = True
            return False
        return True


def follow_reply(message_id: int) -> ReplyFollower | None:
    """Return a follower of reply ``message_id``'s stream, or None without a Redis.

    Whether the stream exists is known after the first :meth:`ReplyFollower.read`
    (``found``). Never raises.
    """
    try:
        target = _key_for(message_id)
    except Exception:
        logger.warning("mpai reply streams: not following this reply", exc_info=True)
        return None
    return None if target is None else ReplyFollower(*target)
