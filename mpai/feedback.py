"""Feedback on assistant messages: a user's ``up``/``down`` rating and optional comment.

One :class:`~mpai.models.Feedback` per (user, message), only on the user's **own**
**assistant** messages (any status: an interrupted reply can be rated too). A message
that does not exist, belongs to someone else, or is a user message is "not found" for
every function here (:class:`MessageNotFound`): the API answers 404 alike, so an id
never tells whether someone else's message exists, and a user message simply has no
feedback resource.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Count, Q, QuerySet

from mpai.models import Feedback, Message

#: Longest accepted comment, in characters.
MAX_COMMENT_CHARS = 2000


class MessageNotFound(LookupError):
    """No assistant message with this id belongs to the user."""


class FeedbackNotFound(LookupError):
    """The user has given no feedback on this message."""


def rateable_message(user: Any, message_id: int) -> Message:
    """The ``user``'s assistant message ``message_id``.

    Raises:
        MessageNotFound: no such message, another user's, or a user-role message.
    """
    try:
        return Message.objects.get(pk=message_id, owner=user, role=Message.Role.ASSISTANT)
    except Message.DoesNotExist:
        raise MessageNotFound(message_id) from None


def get_feedback(user: Any, message_id: int) -> Feedback:
    """The ``user``'s feedback on their assistant message ``message_id``.

    Raises:
        MessageNotFound: as for :func:`rateable_message`.
        FeedbackNotFound: the message has no feedback from the user.
    """
    message = rateable_message(user, message_id)
    try:
        return Feedback.objects.get(user=user, message=message)
    except Feedback.DoesNotExist:
        raise FeedbackNotFound(message_id) from None


def set_feedback(
    user: Any, message_id: int, rating: str, comment: str = ""
) -> tuple[Feedback, bool]:
    """Create or replace the ``user``'s feedback on message ``message_id``.

    ``rating`` is ``"up"`` or ``"down"`` (:class:`Feedback.Rating`); ``comment`` at most
    :data:`MAX_COMMENT_CHARS` characters (``""``: none). Returns ``(feedback, created)``.
    Safe under concurrent calls for the same pair (the unique constraint decides; the
    loser updates the winner's row).

    Raises:
        MessageNotFound: as for :func:`rateable_message`.
        ValueError: an unknown ``rating`` or a comment too long.
    """
    if rating not in Feedback.Rating.values:
        raise ValueError(f"rating must be one of {Feedback.Rating.values}")
    if len(comment) > MAX_COMMENT_CHARS:
        raise ValueError(f"comment longer than {MAX_COMMENT_CHARS} characters")
    message = rateable_message(user, message_id)
    with transaction.atomic():
        return Feedback.objects.update_or_create(
            user=user, message=message, defaults={"rating": rating, "comment": comment}
        )


def delete_feedback(user: Any, message_id: int) -> None:
    """Delete the ``user``'s feedback on message ``message_id``.

    Raises:
        MessageNotFound: as for :func:`rateable_message`.
        FeedbackNotFound: there was none.
    """
    message = rateable_message(user, message_id)
    deleted, _ = Feedback.objects.filter(user=user, message=message).delete()
    if not deleted:
        raise FeedbackNotFound(message_id)


def counts_by_model(queryset: QuerySet[Feedback] | None = None) -> list[dict[str, Any]]:
    """Feedback counted by the model of the rated message, in one query.

    ``queryset`` narrows the feedback counted (the admin passes its filtered change
    list); default all. Returns ``[{"model": str, "up": int, "down": int, "total":
    int}]``, most rated model first (``model`` is ``""`` for a reply recorded without
    one).
    """
    rows = (
        (queryset if queryset is not None else Feedback.objects.all())
        .order_by()
        .values("message__model")
        .annotate(
            up=Count("id", filter=Q(rating=Feedback.Rating.UP)),
            down=Count("id", filter=Q(rating=Feedback.Rating.DOWN)),
            total=Count("id"),
        )
        .order_by("-total", "message__model")
    )
    return [
        {
            "model": row["message__model"],
            "up": row["up"],
            "down": row["down"],
            "total": row["total"],
        }
        for row in rows
    ]
