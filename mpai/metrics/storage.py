"""Per-minute and per-hour storage of turn figures: in Redis when configured, else in
the database.

What one turn adds to its minute (``minute = int(ended_at // 60)``, Unix minutes) and,
the same again, to its hour (``hour = minute // 60``, Unix hours; the roll-up):

- per stage of :data:`mpai.metrics.record.STAGES`: one count in the bucket of
  :mod:`mpai.metrics.histogram` its duration (ms) falls in;
- one turn, one turn of its outcome, cached / replayed turns, and the input and
  output token sums.

Redis (``MPAI["METRICS_REDIS_URL"]``, else ``RATE_LIMIT["REDIS_URL"]``): hashes

- ``mpai:metrics:h:<minute>:<stage>``: bucket index → count (``HINCRBY``);
- ``mpai:metrics:c:<minute>``: ``turns``, ``outcome:<outcome>``, ``cached``,
  ``replayed``, ``input_tokens``, ``output_tokens`` → count or sum;
- ``mpai:metrics:hh:<hour>:<stage>`` and ``mpai:metrics:hc:<hour>``: the same per hour;
- ``mpai:metrics:last``: the last turn, JSON;

all written in one pipelined round trip per turn (``transaction=False``), each minute
key given a 7-day ``EXPIRE`` and each hour key 7 days + 1 hour in the same pipeline.
Counts add, so any number of processes write the same keys and a reader sums them
(HINCRBY is atomic).

Database (the embedded default): rows of :class:`mpai.models.MetricBucket`
``(minute, stage, bucket) → count``, counters as stage ``#turns``, ``#outcome:<x>``…
with bucket 0; an hour's rows have ``minute`` = the hour's first minute and the stage
prefixed with ``@`` (``@total``, ``@#turns``…). Written in one ``INSERT … ON CONFLICT
DO UPDATE SET count = count + excluded.count`` statement per turn (PostgreSQL, SQLite),
minute and hour rows together, so concurrent writers never lose a count. Rows older
than 7 days are deleted now and then by the writer. The last turn is kept in this
process's memory.

Reading a window (:func:`read`) takes its whole hours from the hour figures and only
the minutes at its edges not covered by a whole hour from the minute figures
(:func:`plan`): a 7-day window reads at most 168 hours and 60 minutes.

Recording never raises: a failing store loses that turn's figures (logged at most
once a minute), never a reply.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from mpai.conf import mpai_settings
from mpai.metrics import histogram
from mpai.metrics.record import STAGES, TurnRecord

logger = logging.getLogger("mpai.metrics")

#: Prefix of every metrics key in Redis.
KEY_PREFIX = "mpai:metrics:"
#: Lifetime of the per-minute figures (s): 7 days.
RETENTION_SECONDS = 7 * 24 * 3600
#: Lifetime of the per-hour figures (s): 7 days + 1 hour, so an hour outlives its minutes.
HOUR_RETENTION_SECONDS = RETENTION_SECONDS + 3600
#: Connect and read timeouts (s) of the metrics Redis client: an outage fails fast.
REDIS_TIMEOUT = 0.5
#: Seconds between two log lines about a failing store.
ERROR_LOG_INTERVAL = 60.0
#: Prefix of the counter rows' stage in the database (never a stage name).
COUNTER = "#"
#: Prefix of the hour rows' stage in the database (before ``COUNTER`` on counters).
HOUR = "@"

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_last_error_log = -ERROR_LOG_INTERVAL
_last_turn: dict[str, Any] | None = None
_last_prune = 0.0
failures = 0


def minute_of(ended_at: float) -> int:
    """Return the Unix minute (``int(seconds // 60)``) of a wall-clock time in s."""
    return int(ended_at // 60)


def hour_of(minute: int) -> int:
    """Return the Unix hour (``minute // 60``) of a Unix minute."""
    return minute // 60


def plan(first_minute: int, last_minute: int) -> tuple[range, list[int]]:
    """Split the minutes ``first_minute .. last_minute`` (inclusive) into (the Unix
    hours wholly inside them, the minutes left at the edges).

    Every minute of the span is in exactly one of the hours or the edge minutes, so
    summing both counts every turn once. The edges hold at most 59 minutes each and
    at most 60 together when the span is a whole number of hours; a span shorter than
    an hour, or one with no whole hour, is all edge minutes.
    """
    first_hour = -(-first_minute // 60)  # the first hour starting at or after first
    end_hour = (last_minute + 1) // 60  # hours before it end at or before last
    if first_hour >= end_hour:
        return range(0), list(range(first_minute, last_minute + 1))
    edges = list(range(first_minute, first_hour * 60))
    edges += range(end_hour * 60, last_minute + 1)
    return range(first_hour, end_hour), edges


def counters_of(record: TurnRecord) -> dict[str, int]:
    """Return the counters one turn adds: ``turns``, ``outcome:<x>``, tokens, flags."""
    counters = {"turns": 1, f"outcome:{record.outcome}": 1}
    if record.cached:
        counters["cached"] = 1
    if record.replayed:
        counters["replayed"] = 1
    if record.input_tokens:
        counters["input_tokens"] = int(record.input_tokens)
    if record.output_tokens:
        counters["output_tokens"] = int(record.output_tokens)
    return counters


def buckets_of(record: TurnRecord) -> dict[str, int]:
    """Return stage → histogram bucket of the stages the record has."""
    return {
        stage: histogram.bucket_index(float(record.timings_ms[stage]))
        for stage in STAGES
        if stage in record.timings_ms
    }


def last_turn_of(record: TurnRecord) -> dict[str, Any]:
    """Return the JSON-able dict :func:`last_turn` gives for ``record``."""
    return asdict(record)


def redis_url() -> str | None:
    """Return the Redis URL the metrics use, or None for the database.

    ``MPAI["METRICS_REDIS_URL"]``; when None, ``RATE_LIMIT["REDIS_URL"]``; an empty
    string means the database even when the rate limiter has a Redis.
    """
    url = mpai_settings.METRICS_REDIS_URL
    if url is None:
        url = mpai_settings.RATE_LIMIT.get("REDIS_URL")
    return url or None


def redis_client(url: str) -> Any:
    """Return this process's client for ``url`` (fast timeouts, no retries)."""
    with _lock:
        client = _clients.get(url)
        if client is None:
            from redis import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = Redis.from_url(
                url,
                socket_connect_timeout=REDIS_TIMEOUT,
                socket_timeout=REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            _clients[url] = client
        return client


def _log_failure(what: str) -> None:
    global _last_error_log, failures
    failures += 1
    now = time.monotonic()
    if now - _last_error_log >= ERROR_LOG_INTERVAL:
        _last_error_log = now
        logger.warning("mpai metrics: %s failed; figures are lost meanwhile", what, exc_info=True)


def record(turn: TurnRecord) -> bool:
    """Store one turn's figures; return False (never raise) when the store failed."""
    global _last_turn
    try:
        _last_turn = last_turn_of(turn)
        url = redis_url()
        if url:
            record_redis(redis_client(url), turn)
        else:
            record_database(turn)
        return True
    except Exception:
        _log_failure("recording a turn")
        return False


def record_redis(client: Any, turn: TurnRecord) -> None:
    """Write ``turn`` to Redis in one pipelined round trip (see the module docstring)."""
    minute = minute_of(turn.ended_at)
    buckets, counters = buckets_of(turn), counters_of(turn)
    pipe = client.pipeline(transaction=False)
    for prefix, span, ttl in (
        ("", minute, RETENTION_SECONDS),
        ("h", hour_of(minute), HOUR_RETENTION_SECONDS),
    ):
        for stage, bucket in buckets.items():
            key = f"{KEY_PREFIX}{prefix}h:{span}:{stage}"
            pipe.hincrby(key, str(bucket), 1)
            pipe.expire(key, ttl)
        key = f"{KEY_PREFIX}{prefix}c:{span}"
        for name, amount in counters.items():
            pipe.hincrby(key, name, amount)
        pipe.expire(key, ttl)
    pipe.set(f"{KEY_PREFIX}last", json.dumps(last_turn_of(turn)), ex=RETENTION_SECONDS)
    pipe.execute()


def _rows_of(turn: TurnRecord) -> list[tuple[int, str, int, int]]:
    minute = minute_of(turn.ended_at)
    buckets, counters = buckets_of(turn), counters_of(turn)
    rows: list[tuple[int, str, int, int]] = []
    for at, prefix in ((minute, ""), (hour_of(minute) * 60, HOUR)):
        rows += [(at, prefix + stage, bucket, 1) for stage, bucket in buckets.items()]
        rows += [(at, prefix + COUNTER + name, 0, amount) for name, amount in counters.items()]
    rows.sort()  # one lock order for every writer: concurrent upserts never deadlock
    return rows


def record_database(turn: TurnRecord) -> None:
    """Add ``turn``'s minute and hour rows to :class:`~mpai.models.MetricBucket`
    (one statement on PostgreSQL and SQLite)."""
    from django.db import connection, transaction
    from django.db.models import F

    from mpai.models import MetricBucket

    rows = _rows_of(turn)
    table = connection.ops.quote_name(MetricBucket._meta.db_table)
    if connection.vendor in ("postgresql", "sqlite"):
        values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
        sql = (
            f"INSERT INTO {table} (minute, stage, bucket, count) VALUES {values} "
            "ON CONFLICT (minute, stage, bucket) "
            f"DO UPDATE SET count = {table}.count + excluded.count"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [value for row in rows for value in row])
    else:  # update, else insert; a lost insert race is retried as an update
        from django.db import IntegrityError

        for minute, stage, bucket, amount in rows:
            match = MetricBucket.objects.filter(minute=minute, stage=stage, bucket=bucket)
            if match.update(count=F("count") + amount):
                continue
            try:
                with transaction.atomic():
                    MetricBucket.objects.create(
                        minute=minute, stage=stage, bucket=bucket, count=amount
                    )
            except IntegrityError:
                match.update(count=F("count") + amount)
    _prune_database(turn.ended_at)


def _prune_database(now: float) -> None:
    """Delete rows older than the retention, at most once an hour per process (an
    hour's rows go with its first minute: that hour is no longer whole in any window)."""
    global _last_prune
    if now - _last_prune < 3600:
        return
    _last_prune = now
    from mpai.models import MetricBucket

    MetricBucket.objects.filter(minute__lt=minute_of(now - RETENTION_SECONDS)).delete()


def last_turn() -> dict[str, Any] | None:
    """Return the last recorded turn (the fields of TurnRecord; ``timings_ms`` in ms)
    or None: from Redis when configured (any process's last turn), else this process's."""
    url = redis_url()
    if url:
        raw = redis_client(url).get(f"{KEY_PREFIX}last")
        return json.loads(raw) if raw else None
    return _last_turn


def read(first_minute: int, last_minute: int) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Return (stage → merged histogram counts, counter → sum) over the minutes
    ``first_minute .. last_minute`` (inclusive), from the configured store: the whole
    hours from the hour figures, the edge minutes from the minute figures (:func:`plan`)."""
    hours, minutes = plan(first_minute, last_minute)
    url = redis_url()
    if url:
        return _read_redis(redis_client(url), hours, minutes)
    return _read_database(hours, minutes)


def _read_redis(
    client: Any, hours: range, minutes: list[int]
) -> tuple[dict[str, list[int]], dict[str, int]]:
    spans = [(f"{KEY_PREFIX}hh:{hour}", f"{KEY_PREFIX}hc:{hour}") for hour in hours]
    spans += [(f"{KEY_PREFIX}h:{minute}", f"{KEY_PREFIX}c:{minute}") for minute in minutes]
    pipe = client.pipeline(transaction=False)
    for histograms, counts_key in spans:
        for stage in STAGES:
            pipe.hgetall(f"{histograms}:{stage}")
        pipe.hgetall(counts_key)
    replies = iter(pipe.execute() if spans else [])
    stages = {stage: histogram.empty() for stage in STAGES}
    counters: dict[str, int] = {}
    for _span in spans:
        for stage in STAGES:
            counts = stages[stage]
            for index, count in next(replies).items():  # absent keys: {}
                if 0 <= int(index) < histogram.BUCKETS:
                    counts[int(index)] += int(count)
        for name, value in next(replies).items():
            key = name.decode() if isinstance(name, bytes) else str(name)
            counters[key] = counters.get(key, 0) + int(value)
    return stages, counters


def _read_database(hours: range, minutes: list[int]) -> tuple[dict[str, list[int]], dict[str, int]]:
    from django.db.models import Q, Sum

    from mpai.models import MetricBucket

    stages = {stage: histogram.empty() for stage in STAGES}
    counters: dict[str, int] = {}
    parts = [Q(minute__in=[hour * 60 for hour in hours], stage__startswith=HOUR)] if hours else []
    parts += [
        Q(minute__gte=low, minute__lte=high) & ~Q(stage__startswith=HOUR)
        for low, high in _runs(minutes)
    ]
    if not parts:
        return stages, counters
    where = parts[0]
    for part in parts[1:]:
        where |= part
    rows = (
        MetricBucket.objects.filter(where)
        .values_list("stage", "bucket")
        .annotate(total=Sum("count"))
    )
    for stored, bucket, total in rows:
        stage = stored.removeprefix(HOUR)
        if stage.startswith(COUNTER):
            name = stage[len(COUNTER) :]
            counters[name] = counters.get(name, 0) + int(total)
        elif stage in stages and 0 <= bucket < histogram.BUCKETS:
            stages[stage][bucket] += int(total)
    return stages, counters


def _runs(minutes: list[int]) -> list[tuple[int, int]]:
    """Return the ascending ``minutes`` as (first, last) runs of consecutive minutes."""
    runs: list[tuple[int, int]] = []
    for minute in minutes:
        if runs and runs[-1][1] == minute - 1:
            runs[-1] = (runs[-1][0], minute)
        else:
            runs.append((minute, minute))
    return runs
