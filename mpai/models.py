"""Chat history: conversations and their messages.

Indexes are named after the queries the app makes (see each ``Meta``):
a user's history newest first (the chat-history API), a conversation's messages in
order (context building), and age (history cleanup, 30 days by default).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Conversation(models.Model):
    """One chat thread owned by one user."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mpai_conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [
            # The user's conversation list, most recently active first: WHERE owner_id = ?
            # ORDER BY updated_at DESC, id DESC (the conversations API's keyset cursor;
            # ``id`` is the unique tiebreak).
            models.Index(fields=["owner", "-updated_at", "-id"], name="mpai_conv_owner_upd_id_idx"),
            # Retention: conversations untouched for N days.
            models.Index(fields=["updated_at"], name="mpai_conv_updated_idx"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One message of a conversation, from the user or the assistant.

    ``content`` of an assistant message is exactly the text streamed to the client,
    also when the reply was interrupted (status ``error`` or ``cancelled``).
    """

    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    # No index of their own: mpai_msg_conv_created_idx and mpai_msg_owner_created_idx
    # start with these columns and serve every lookup (cascades included) by them.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="mpai_messages",
        db_index=False,
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    cached = models.BooleanField(default=False)
    # The client's id for an idempotent send (on the user message of the exchange).
    client_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001 (NULL = none, for the conditional unique constraint)
    created_at = models.DateTimeField(auto_now_add=True)
    # While ``streaming``: the last time the process writing the reply said it is alive
    # (``mpai.chat.leases``). A streaming reply whose heartbeat is older than
    # ``MPAI["STREAM_LEASE_SECONDS"]`` has no live writer in any process.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # An assistant reply's tool calls and their results, in order (None: it made none):
    # [{"id", "name", "arguments", "status", "content", "duration_ms", "error_code"}]
    # (mpai.chat.tool_loop.tool_record). Not in the chat-history API.
    tool_calls = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # Chat-history API: WHERE owner_id = ? ORDER BY created_at DESC, id DESC.
            models.Index(fields=["owner", "-created_at", "-id"], name="mpai_msg_owner_created_idx"),
            # Context building: a conversation's messages in order.
            models.Index(
                fields=["conversation", "created_at", "id"], name="mpai_msg_conv_created_idx"
            ),
            # Retention cleanup: WHERE id > 0 AND created_at < ? ORDER BY created_at.
            # Partial on a predicate only the cleanup repeats, so the planner cannot take
            # it for a user's history (reading it backwards, discarding other users'
            # newer rows, was 40x slower for a user whose messages are the oldest).
            models.Index(fields=["created_at"], name="mpai_msg_expiry_idx", condition=Q(id__gt=0)),
            # The daily sweep of replies left streaming by a dead process: a few rows.
            models.Index(
                fields=["created_at"],
                name="mpai_msg_streaming_idx",
                condition=Q(status="streaming"),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "client_id"],
                condition=Q(client_id__isnull=False),
                name="mpai_msg_owner_client_id_uniq",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk}"


class CacheEntry(models.Model):
    """A row of the layered cache's database layer (L3).

    The table is Django's ``DatabaseCache`` schema (what ``createcachetable`` makes),
    created by mpai's migrations so every database, the test ones included, has it.
    Used through :class:`mpai.cache.database.DatabaseLayer` (a ``DatabaseCache``), never
    through the ORM.
    """

    cache_key = models.CharField(max_length=255, primary_key=True)
    value = models.TextField()
    expires = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "mpai_cache"
        verbose_name = "cache entry"
        verbose_name_plural = "cache entries"

    def __str__(self) -> str:
        return self.cache_key


class SiteIdentity(models.Model):
    """This database's identity: one row, made on first use (``mpai.site_identity``).

    Cached entries that can reach a prompt carry ``uuid`` and are used only when it
    matches, so two sites sharing one Redis never read each other's entries even when
    their ids (which start at 1 in every database) coincide (README, "The layered cache").
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "site identity"
        verbose_name_plural = "site identity"

    def __str__(self) -> str:
        return str(self.uuid)


class MetricBucket(models.Model):
    """One count of the per-minute turn metrics when no Redis is configured
    (:mod:`mpai.metrics.storage`).

    ``stage`` is a stage of ``mpai.metrics.record.STAGES`` and ``bucket`` the index of a
    :mod:`mpai.metrics.histogram` bucket; counters (turns, outcomes, token sums) use a
    stage starting with ``#`` and bucket 0. ``minute`` is the Unix minute
    (``int(time.time() // 60)``). Rows are added to with one upsert per turn.
    """

    minute = models.IntegerField()
    stage = models.CharField(max_length=64)
    bucket = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "metric bucket"
        verbose_name_plural = "metric buckets"
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "stage", "bucket"], name="mpai_metricbucket_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.minute} {self.stage}[{self.bucket}] = {self.count}"


class Feedback(models.Model):
    """A user's rating of one assistant message of their own (``mpai.feedback``).

    At most one per (user, message): rating again changes it. ``rating`` is ``up`` or
    ``down``; ``comment`` is optional free text of at most 2,000 characters.
    """

    class Rating(models.TextChoices):
        UP = "up", "Up"
        DOWN = "down", "Down"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mpai_feedback"
    )
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    comment = models.TextField(max_length=2000, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "feedback"
        verbose_name_plural = "feedback"
        ordering = ["-created_at", "-id"]
        indexes = [
            # The admin's list, newest first, and its date filter.
            models.Index(fields=["-created_at", "-id"], name="mpai_feedback_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["user", "message"], name="mpai_feedback_user_msg_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.rating} on message {self.message_id}"


class HistoryCount(models.Model):
    """How many messages a user has: the ``count`` of the chat-history API's page 1
    without a ``COUNT(*)`` over the user's rows (20 ms for 600,000 messages).

    On PostgreSQL the row is kept by statement-level triggers on ``mpai_message``
    (migration ``0010_historycount``): every ``INSERT`` and ``DELETE``, whatever issued
    it (a turn, the cleanup, an erase, a cascade, the admin), updates it in the same
    transaction. Other databases do not keep it and count instead.
    """

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="mpai_history_count",
        db_constraint=False,
    )
    messages = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "history count"
        verbose_name_plural = "history counts"

    def __str__(self) -> str:
        return f"{self.owner_id}: {self.messages} messages"


# Health state lives with the health package; imported here so Django registers it.
from mpai.health.models import Health, HealthAlert, HealthSnapshot, TaskHeartbeat  # noqa: E402

__all__ = [
    "CacheEntry",
    "Conversation",
    "Feedback",
    "Health",
    "HealthAlert",
    "HealthSnapshot",
    "HistoryCount",
    "Message",
    "MetricBucket",
    "SiteIdentity",
    "TaskHeartbeat",
]
from mpai.usage.models import QuotaRejection, UsageDay, UsageReport  # noqa: E402,F401
