"""mpai settings: one lazily read object over ``settings.MPAI``.

Modelled on DRF's ``rest_framework/settings.py``: every option has a default in
:data:`DEFAULTS`, a site overrides any of them in ``settings.MPAI``, values are
read on access (never copied at import time) and the cache of resolved values is
dropped on ``setting_changed`` so ``override_settings`` works in tests.

Two kinds of option are finished here, once, so no reader has to:

- :data:`MERGED_DICTS`: a site's dict is merged over the default dict, key by key, so
  ``mpai_settings.RATE_LIMIT`` always holds every key (a site sets only what it changes).
- :data:`IMPORT_STRINGS`: the value is an import string (or the object itself) and
  reading the option returns the imported object, as DRF's ``IMPORT_STRINGS`` does.

Usage::

    from mpai.conf import mpai_settings
    mpai_settings.MAX_MESSAGE_LENGTH
    mpai_settings.RATE_LIMIT["CAPACITY"]  # complete, defaults included
    mpai_settings.TOKEN_ESTIMATOR("some text")  # the callable, not its path
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # Provider, built like a Django cache backend: import string + OPTIONS.
    # The offline provider needs no network; see mpai.providers.offline.
    "PROVIDER": {
        "BACKEND": "mpai.providers.offline.OfflineProvider",
        "OPTIONS": {},
    },
    # The capable model and the small fast model (the fast one defaults to MODEL).
    "MODEL": "offline-1",
    "FAST_MODEL": None,
    # Input validation: maximum characters in one user message.
    "MAX_MESSAGE_LENGTH": 8000,
    # Websocket frames and JSON request bodies (mpai.jsonlimits): most bytes (UTF-8) and
    # most nesting levels parsed. The largest valid chat message fits in 128 KiB even
    # escaped as ASCII (8,000 astral characters as \uXXXX pairs are 96,000 bytes, plus
    # page.url and page.title); a chat message nests 2 deep.
    "MAX_FRAME_BYTES": 128 * 1024,
    "MAX_JSON_DEPTH": 32,
    # --- metrics (mpai.metrics.views) ---
    # Bearer token a Prometheus scraper sends to read /metrics
    # (Authorization: Bearer <token>); None = only signed-in staff users may read it.
    "METRICS_TOKEN": None,
    # --- context building (mpai.chat.context) ---
    # Token budget = MAX_INPUT_TOKENS - REPLY_RESERVE_TOKENS (tokens).
    "MAX_INPUT_TOKENS": 8000,
    "REPLY_RESERVE_TOKENS": 1000,
    # Import string of a callable(text: str) -> int; the default works offline.
    "TOKEN_ESTIMATOR": "mpai.chat.tokens.estimate_tokens",
    # Section name -> import string of a provider (see mpai.chat.sections); None drops it.
    "CONTEXT_SECTIONS": {
        "user_info": "mpai.chat.sections.user_info",
        "current_page": "mpai.chat.sections.current_page",
        "site_data": "mpai.chat.sections.site_data",
        "system_info": "mpai.chat.sections.system_info",
    },
    # Section priorities, 1 = kept first.
    "CONTEXT_PRIORITIES": {
        "user_query": 1,
        "history": 2,
        "user_info": 3,
        "current_page": 4,
        "site_data": 5,
        "system_info": 6,
    },
    # The site-data section is loaded only for queries matching this regular expression.
    "SITE_DATA_KEYWORDS": r"member|subscri|plan|billing|renew|price|payment|account|access",
    "SITE_NAME": "Membership site",
    # --- live conversation memory (mpai.chat.memory) ---
    "MEMORY_MAX_PAIRS": 20,
    # A conversation idle this long (s) drops its live memory and cached context.
    "MEMORY_IDLE_SECONDS": 24 * 3600,
    # --- model choice: requests under this many prompt tokens, matching no rule, use
    # FAST_MODEL (mpai.chat.model_choice) ---
    "FAST_MODEL_MAX_TOKENS": 1000,
    # Regular expressions (case-insensitive) that mark a query as complex.
    "COMPLEXITY_RULES": [
        r"```",
        r"\b(analy[sz]e|compare|explain (in detail|why)|step[- ]by[- ]step|refactor|debug)\b",
        r"\b(write|generate) (a |an |the )?(code|program|script|function|essay|report)\b",
    ],
    # --- response cache (mpai.chat.response_cache; complete replies, 30 minutes) ---
    "RESPONSE_CACHE_ENABLED": True,
    # Lifetime in seconds; None = the "api_response" category default.
    "RESPONSE_CACHE_TIMEOUT": None,
    # Characters per delta when a cached reply is streamed.
    "CACHED_DELTA_CHARS": 24,
    # --- slow-operation log levels (mpai.chat.slowlog): below INFO_S at DEBUG, to WARNING_S at
    # INFO, above at WARNING (seconds) ---
    "SLOW_LOG_INFO_S": 1.0,
    "SLOW_LOG_WARNING_S": 5.0,
    # System prompt sent first in every request.
    "SYSTEM_PROMPT": ("You are the assistant of a membership website. Answer clearly and briefly."),
    # Replies streamed at once by one process (mpai.chat.capacity): the stream slots,
    # and the threads of the websocket's stream pool. Past them, up to STREAM_QUEUE
    # turns wait up to STREAM_QUEUE_SECONDS for a slot; the rest get "overloaded".
    # The default is measured (README, "Performance"): 100 model-paced streams use
    # about three quarters of one core, the most one Python process has to give.
    "STREAM_WORKERS": 100,
    "STREAM_QUEUE": 100,
    "STREAM_QUEUE_SECONDS": 0.25,
    # Seconds a message's client_id is remembered in Redis, so a new one needs no
    # database lookup before the provider request (mpai.chat.client_ids); 0 = off.
    "CLIENT_ID_TTL_SECONDS": 86_400,
    # Chat history older than this many days is deleted by the history cleanup
    # (mpai.chat.cleanup).
    "HISTORY_RETENTION_DAYS": 30,
    # Per-user retention (mpai.chat.cleanup): None, or an import string of a callable
    # (user) -> int | None giving that user's retention in days (None: the default
    # above), e.g. by plan. It is asked only about owners of messages older than
    # min(HISTORY_RETENTION_DAYS, HISTORY_RETENTION_MIN_DAYS); a rule's answer below
    # HISTORY_RETENTION_MIN_DAYS is raised to it.
    "HISTORY_RETENTION_RULE": None,
    "HISTORY_RETENTION_MIN_DAYS": 1,
    # Rows deleted per batch (one short transaction each) by the history cleanup and
    # the erase of a user's history (mpai.chat.erase).
    "CLEANUP_BATCH_SIZE": 1000,
    # Rows read from the database per round trip by the history export (mpai.chat.export).
    "EXPORT_CHUNK_SIZE": 500,
    # Read replica (mpai.db_router.ReplicaRouter): the database alias history reads go
    # to during a request (None: off), and the seconds after a user's own write during
    # which that user's reads stay on the primary (longer than the replica's lag).
    "READ_REPLICA": None,
    "READ_REPLICA_PIN_SECONDS": 5.0,
    # Conversation titles: characters of the first message used as the title.
    "TITLE_LENGTH": 60,
    # The chat page's Sign-out button posts here: a path or a URL name. None: the
    # site's URL named "logout" if it has one, else no button (templates never need a
    # URL name the site may lack).
    "LOGOUT_URL": None,
    # Rate limiting (mpai.chat.ratelimit): one token bucket per user (``user:<pk>``) or,
    # for anonymous use, per client address (``ip:<addr>``); the figures are ours. Keys
    # left out of a site's RATE_LIMIT keep these defaults (MERGED_DICTS).
    "RATE_LIMIT": {
        # False: every check is allowed and nothing touches the cache or Redis.
        "ENABLED": True,
        # Bucket size in tokens: the burst a full bucket allows (one message = 1 token).
        "CAPACITY": 10,
        # Refill in tokens per second: 0.5 = 30 messages a minute sustained.
        "REFILL_RATE": 0.5,
        # Django cache alias: a django-redis cache gives the atomic Redis bucket on its
        # connection; any other backend gives the one-process cache bucket.
        "CACHE": "default",
        # A Redis URL for the bucket instead of the cache's connection (None: use CACHE).
        "REDIS_URL": None,
        # Prefix of every bucket key in Redis or in the cache.
        "KEY_PREFIX": "mpai:rl:",
        # Seconds the limiter's circuit breaker stays open after its store (Redis or
        # the cache) failed, before one check probes it again; requests are allowed
        # (fail open) meanwhile.
        "OUTAGE_BACKOFF": 1.0,
    },
    # Cache (mpai.cache grouped API): the Django cache alias it uses. The layered
    # backend's own options live in CACHES[alias]["OPTIONS"] (mpai.cache.config).
    "CACHE_ALIAS": "default",
    # Cache: default lifetime in seconds per group (None = forever); the groups are
    # named in mpai.chat.cache_groups. A site's dict is merged over this one, group by
    # group (MERGED_DICTS).
    "CACHE_TIMEOUTS": {
        "user_context": 300,  # a user's cached profile, 5 minutes
        "api_response": 1800,  # complete replies, 30 minutes
        "tool_metrics": 3600,  # tool metrics, 1 hour
        "query_analysis": 1200,  # query analysis, 20 minutes
        "conversation_context": 900,  # a conversation's cached history, 15 minutes
    },
    # Cache: lifetime in seconds of groups not in CACHE_TIMEOUTS (1 hour).
    "CACHE_DEFAULT_TIMEOUT": 3600,
    # --- batch and parallel requests (mpai.chat.batch) ---
    # Most provider requests in flight at once in one complete_many() call.
    "BATCH_MAX_CONCURRENCY": 4,
    # Prompt batching: most questions packed into one request, and most estimated
    # tokens (TOKEN_ESTIMATOR) of the questions in one request.
    "BATCH_MAX_QUESTIONS": 10,
    "BATCH_MAX_TOKENS": 2000,
    # Background titles (mpai.chat.titles): conversations titled per task run, and the
    # longest title kept (characters).
    "TITLE_BATCH_SIZE": 20,
    "TITLE_MAX_CHARS": 60,
    # Websocket back-pressure, per connection: bytes of frames buffered for a client
    # that reads slower than the reply streams, beyond what the server's transport
    # holds; the stream waits while the buffer is full. A client that takes no frame
    # for WEBSOCKET_SLOW_CLIENT_SECONDS while it is full is dropped (close code 1013):
    # the reply still finishes, is saved, and a resend replays it.
    "WEBSOCKET_SEND_BUFFER_BYTES": 256 * 1024,
    "WEBSOCKET_SLOW_CLIENT_SECONDS": 15.0,
    # Stream leases (mpai.chat.leases): seconds between heartbeats of the replies a
    # process writes, and the age of a heartbeat after which a streaming reply is
    # known to have no live writer.
    "STREAM_HEARTBEAT_SECONDS": 5.0,
    "STREAM_LEASE_SECONDS": 30.0,
    # Seconds a resend waits for the original reply to finish before it says so.
    "REPLAY_TIMEOUT_SECONDS": 120.0,
    # Seconds between database reads while a resend waits (no connection held between).
    "REPLAY_POLL_SECONDS": 0.25,
    # Reply streams (mpai.chat.reply_stream): a reply being generated is published to a
    # Redis Stream (the rate limiter's Redis) in batches of the deltas of up to this many
    # ms (fewer batches cost less CPU: README, "Resends and replays"), and a resend in any
    # process follows it; the stream expires this many seconds after its last write.
    "REPLAY_BATCH_MS": 100,
    "REPLAY_STREAM_TTL_SECONDS": 300,
    # Attempts of the final save of a reply, each on a fresh database connection.
    "SAVE_ATTEMPTS": 5,
    # --- turn metrics (mpai.metrics): per-minute histograms of each stage's duration ---
    # False: the receiver is not connected (and, when already connected, records nothing).
    "METRICS_ENABLED": True,
    # Redis URL of the per-minute figures. None: RATE_LIMIT["REDIS_URL"] if set, else
    # the database (mpai.models.MetricBucket); "" forces the database.
    "METRICS_REDIS_URL": None,
    # OpenTelemetry spans of each turn (mpai.metrics.tracing, the mpai[otel] extra):
    # True = whenever opentelemetry is installed and the site configured a
    # TracerProvider; False emits none (read on each turn).
    "TRACING": True,
    # Per-stage changes of the process's resident memory (KiB) in each turn's metrics
    # record, TurnRecord.memory_kib (mpai.metrics.memory; read on each signal).
    "MEMORY_PROFILING": False,
    # --- tools (mpai.tools) ---
    # What the model may call (OpenAI function calling): import strings of
    # mpai.tools.Tool instances (a @tool function is one) or Tool subclasses.
    "TOOLS": [],
    # Most tool calls of one reply running at once (threads).
    "TOOL_MAX_CONCURRENCY": 4,
    # Most rounds of tool calls in one turn before the model must answer.
    "TOOL_MAX_ITERATIONS": 5,
    # Seconds one tool call may run when its tool sets no timeout_s.
    "TOOL_TIMEOUT_SECONDS": 5.0,
    # Most bytes (UTF-8) of a tool's JSON result; larger gives a result_too_large error.
    "TOOL_RESULT_MAX_BYTES": 16 * 1024,
    # Import string of the site's mpai.tools.membership.MembershipAdapter subclass
    # (or an instance), read by the built-in membership tools.
    "MEMBERSHIP_ADAPTER": "mpai.tools.membership.NullMembershipAdapter",
    # --- usage and quotas (mpai.usage) ---
    # Plan name (MembershipAdapter.plan_for) -> limits; "default" applies to users with
    # no plan or a plan not listed. Keys: messages_per_day, tokens_per_day,
    # tokens_per_month (tokens in + out); None = unlimited. Plans are merged over these
    # (MERGED_DICTS), so "default" stays unlimited unless a site sets it.
    "QUOTAS": {
        "default": {"messages_per_day": None, "tokens_per_day": None, "tokens_per_month": None},
    },
    # Staff users are unlimited unless this is True.
    "QUOTAS_APPLY_TO_STAFF": False,
    # None: quota days and months (and the usage rows' days) are in UTC. Else an import
    # string of a callable (user) -> time zone name (e.g. "Europe/Paris") or None (UTC).
    "QUOTA_TIMEZONE": None,
    # Model -> {"input": price, "output": price} per MILLION tokens in CURRENCY
    # (strings, parsed to Decimal), e.g. {"gpt-4o": {"input": "2.50", "output": "10.00"}}.
    # Models not listed cost 0; cached replies always cost 0.
    "PRICES": {},
    "CURRENCY": "USD",
    # Usage rows (mpai.usage.models.UsageDay) older than this many days are deleted by
    # the mpai.cleanup_usage task.
    "USAGE_RETENTION_DAYS": 400,
    # --- system health (mpai.health; README, "System health") ---
    # Keys left out of a site's HEALTH keep these defaults (MERGED_DICTS).
    "HEALTH": {
        # The checks run, in order: import strings of mpai.health.results.HealthCheck
        # subclasses, or {"BACKEND": "<import string>", "OPTIONS": {...}} (keyword
        # arguments of the class). None: mpai.health.checks.DEFAULT_CHECKS.
        "CHECKS": None,
        # Seconds one check may take; past it the check is an error (checks run
        # concurrently, so a run takes about its slowest check, at most this long).
        "TIMEOUT": 5.0,
        # Seconds the readiness endpoint (/api/mpai/v1/health/ready/) gives its checks
        # (the database and the default cache); past it the endpoint answers 503.
        "READY_TIMEOUT": 2.0,
        # Seconds between scheduled runs (the mpai.run_health_checks beat task).
        "INTERVAL": 3600.0,
        # Snapshots kept: at most this many, none older than SNAPSHOTS_MAX_AGE seconds.
        "SNAPSHOTS_KEEP": 100,
        "SNAPSHOTS_MAX_AGE": 30 * 24 * 3600,
        # Process memory (resident bytes) against MEMORY_LIMIT_BYTES (None: the
        # cgroup's memory limit, else the machine's total memory): fractions.
        "MEMORY_LIMIT_BYTES": None,
        "MEMORY_WARNING": 0.80,
        "MEMORY_ERROR": 0.90,
        # CPU use of the machine (fractions of all cores) sampled over CPU_INTERVAL s.
        "CPU_WARNING": 0.70,
        "CPU_ERROR": 0.85,
        "CPU_INTERVAL": 0.5,
        # Disk use of DISK_PATH (None: the project's BASE_DIR): fractions.
        "DISK_PATH": None,
        "DISK_WARNING": 0.90,
        "DISK_ERROR": 0.95,
        # PostgreSQL connections in use against max_connections: fractions.
        "DB_CONNECTIONS_WARNING": 0.80,
        "DB_CONNECTIONS_ERROR": 0.95,
        # The provider's models endpoint: seconds to answer; provider errors among the
        # last hour's turns (fractions; needs METRICS_ENABLED).
        "PROVIDER_TIMEOUT": 3.0,
        "PROVIDER_ERROR_RATE_WARNING": 0.05,
        "PROVIDER_ERROR_RATE_ERROR": 0.25,
        # p95 of a turn's total time over the last hour (ms); None: no error level.
        "RESPONSE_TIME_P95_WARNING_MS": 5000.0,
        "RESPONSE_TIME_P95_ERROR_MS": None,
        # Scheduled tasks: a task is late when it has not succeeded within its schedule
        # plus this margin (fraction of its schedule, at least TASK_MARGIN_MIN seconds).
        "TASK_MARGIN": 0.5,
        "TASK_MARGIN_MIN": 300.0,
        # An alert fires after this many consecutive failing runs of its check and
        # resolves after this many passing ones.
        "FAILURES_TO_FIRE": 2,
        "PASSES_TO_RESOLVE": 1,
    },
    # --- alert email (mpai.health.notifications) ---
    # Addresses alerts are emailed to; None: the project's ADMINS.
    "ALERT_RECIPIENTS": None,
    "ALERTS": {
        # False: no email (alerts are still recorded, logged and signalled).
        "EMAIL_ENABLED": True,
        # The least severity emailed: "error" or "warning".
        "MIN_SEVERITY": "error",
        # Seconds before a still-firing alert is emailed again (4 h).
        "REPEAT_INTERVAL": 4 * 3600.0,
        # Email a notice when an alert resolves (Alertmanager's send_resolved).
        "SEND_RESOLVED": True,
        # Absolute URL of the dashboard for the email's link; None: built from
        # settings.MPAI_SITE_URL if set, else a path only.
        "DASHBOARD_URL": None,
        # The site's name in the subject; None: the Sites framework's name if installed,
        # else "mpai".
        "SITE_NAME": None,
        # The email's From address; None: settings.SERVER_EMAIL (as mail_admins()).
        "FROM_EMAIL": None,
        # Seconds the email connection may block when settings.EMAIL_TIMEOUT is None
        # (the alerts being emailed stay locked meanwhile).
        "EMAIL_TIMEOUT": 10.0,
    },
}

#: Dict-valued options a site's dict is merged over, key by key: reading one returns
#: the defaults updated with the site's keys (``None`` or an absent option: the defaults).
MERGED_DICTS: frozenset[str] = frozenset(
    {"RATE_LIMIT", "CACHE_TIMEOUTS", "HEALTH", "ALERTS", "QUOTAS"}
)

#: Options whose value is an import string (or the object itself), resolved to the
#: object on access, as DRF's ``IMPORT_STRINGS``.
IMPORT_STRINGS: frozenset[str] = frozenset(
    {"TOKEN_ESTIMATOR", "HISTORY_RETENTION_RULE", "MEMBERSHIP_ADAPTER", "QUOTA_TIMEZONE"}
)


def perform_import(value: Any, name: str) -> Any:
    """Return the object ``value`` names (``value`` itself when it is not a string).

    Raises:
        ImproperlyConfigured: the import string cannot be imported (the cause chained).
    """
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f'Could not import {value!r} for MPAI["{name}"]: {type(exc).__name__}: {exc}'
        ) from exc


class MpaiSettings:
    """Attribute access to ``settings.MPAI`` merged over :data:`DEFAULTS`.

    Values are computed on first access and kept until :meth:`reload` (called on
    ``setting_changed``): :data:`MERGED_DICTS` are merged over their defaults and
    :data:`IMPORT_STRINGS` resolved to their objects.

    Raises:
        AttributeError: for a name that is not in :data:`DEFAULTS`.
        ImproperlyConfigured: a merged option that is not a dict, or an import string
            that cannot be imported.
    """

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        if not hasattr(self, "_user_settings"):
            self._user_settings: dict[str, Any] = getattr(settings, "MPAI", {}) or {}
        return self._user_settings

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr not in self.defaults:
            raise AttributeError(f"Invalid mpai setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr in MERGED_DICTS:
            value = self._merged(attr, value)
        elif attr in IMPORT_STRINGS:
            value = perform_import(value, attr)
        elif attr == "FAST_MODEL" and not value:
            value = self.MODEL
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    def _merged(self, attr: str, value: Any) -> dict[str, Any]:
        default = self.defaults[attr]
        if value is None or value is default:
            return dict(default)
        if not isinstance(value, dict):
            raise ImproperlyConfigured(
                f'MPAI["{attr}"] must be a dict (its keys are merged over the defaults), '
                f"not {type(value).__name__}."
            )
        return {**default, **value}

    def reload(self) -> None:
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()
        if hasattr(self, "_user_settings"):
            delattr(self, "_user_settings")


mpai_settings = MpaiSettings(DEFAULTS)


@receiver(setting_changed)
def _reload_mpai_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "MPAI":
        mpai_settings.reload()
