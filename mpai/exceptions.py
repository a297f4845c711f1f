"""The mpai error hierarchy.

Every error a client may see carries a stable ``code`` (the ``chat.error`` codes of
README, "Websocket"), a human ``detail`` and, as DRF's ``APIException`` does, the HTTP
``status_code`` the HTTP API answers it with. Interfaces build their frames and bodies
from :meth:`MpaiError.as_payload`.
"""

from __future__ import annotations

from typing import Any


class MpaiError(Exception):
    """Base of every mpai error.

    Attributes:
        code: the stable error code sent to clients.
        detail: a human sentence safe to show to the user.
        retry_after: seconds the client should wait before retrying, or None.
    """

    code = "internal_error"
    status_code = 500
    default_detail = "Something went wrong on our side."

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None) -> None:
        self.detail = detail or self.default_detail
        self.retry_after = retry_after
        super().__init__(self.detail)

    def as_payload(self, *, message_id: int | None = None) -> dict[str, Any]:
        """Return ``{"code", "detail", "retry_after"?, "message"?}`` for clients.

        Args:
            message_id: the reply's id when a partial reply was saved.
        """
        payload: dict[str, Any] = {"code": self.code, "detail": self.detail}
        if self.retry_after is not None:
            payload["retry_after"] = self.retry_after
        if message_id is not None:
            payload["message"] = message_id
        return payload

    @classmethod
    def for_code(cls, code: str, detail: str | None = None) -> MpaiError:
        """Return an error of the class whose ``code`` is ``code`` (base class if none).

        Used to report a saved reply's ``error_code`` again (a replay).
        """
        pending: list[type[MpaiError]] = [cls]
        while pending:
            klass = pending.pop()
            if klass.code == code:
                return klass(detail)
            pending.extend(klass.__subclasses__())
        error = MpaiError(detail)
        error.code = code
        return error


# --- input and access ----------------------------------------------------------------


class InvalidMessage(MpaiError):
    code = "invalid_message"
    status_code = 400
    default_detail = "The message is empty or contains characters that are not allowed."


class MessageTooLong(MpaiError):
    code = "message_too_long"
    status_code = 400
    default_detail = "The message is too long."


class ConversationNotFound(MpaiError):
    code = "conversation_not_found"
    status_code = 404
    default_detail = "No such conversation."


class RateLimited(MpaiError):
    code = "rate_limited"
    status_code = 429
    default_detail = "Too many messages; please wait a moment."


class Overloaded(MpaiError):
    """The process streams as many replies as it may (``MPAI["STREAM_WORKERS"]``) and
    no slot came free within ``MPAI["STREAM_QUEUE_SECONDS"]``; ``retry_after`` in s.
    Nothing was saved."""

    code = "overloaded"
    status_code = 503
    default_detail = "The assistant is busy with other members right now; please retry shortly."


class NotAuthenticated(MpaiError):
    """The connection's session ended (signed out, deactivated, password changed)."""

    code = "not_authenticated"
    status_code = 401
    default_detail = "You are signed out; sign in again to chat."


class Busy(MpaiError):
    code = "busy"
    status_code = 409
    default_detail = "A reply is still streaming on this connection."


class InvalidJson(MpaiError):
    """A websocket frame or request body that is not JSON mpai accepts: malformed, not
    UTF-8, nested deeper than ``MPAI["MAX_JSON_DEPTH"]`` or larger than
    ``MPAI["MAX_FRAME_BYTES"]`` (README, "Settings")."""

    code = "invalid_json"
    status_code = 400
    default_detail = "The frame is not valid JSON."


# --- provider -------------------------------------------------------------------------


class ProviderError(MpaiError):
    """An error from the model provider.

    Attributes:
        status: the HTTP status code, or None (connection errors, stream errors).
        provider_message: the provider's own error message, for logs.
    """

    code = "provider_error"
    status_code = 502
    default_detail = "The assistant's provider reported an error."

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        provider_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.status = status
        self.provider_message = provider_message


class ProviderAuthError(ProviderError):
    """401/403: the API key is missing, wrong or not allowed."""

    code = "provider_auth"
    default_detail = "The assistant's provider refused our credentials."


class ProviderRateLimited(ProviderError):
    """429 after retries; ``retry_after`` holds the provider's Retry-After when sent."""

    code = "provider_rate_limited"
    default_detail = "The assistant's provider is rate limiting us; please retry shortly."


class ProviderBadRequest(ProviderError):
    """Another 4xx: the request was not accepted."""

    code = "provider_bad_request"
    default_detail = "The assistant's provider did not accept the request."


class ContextLengthExceeded(ProviderBadRequest):
    """400 with the provider's context-length error code."""

    code = "context_length_exceeded"
    default_detail = "The conversation is too long for the model."


class ProviderUnavailable(ProviderError):
    """Connection failures, 409 and 5xx after retries."""

    code = "provider_unavailable"
    default_detail = "The assistant's provider is unavailable; please retry shortly."


class ProviderTimeout(ProviderError):
    """Connect or read timeouts, and 408 after retries."""

    code = "provider_timeout"
    status_code = 504
    default_detail = "The assistant's provider did not answer in time."


class ProviderStreamError(ProviderError):
    """An error object or ``event: error`` inside an accepted stream."""

    code = "provider_error"
    default_detail = "The assistant's provider failed while answering."


# --- tools ----------------------------------------------------------------------------


class ToolIterationsExceeded(MpaiError):
    """The model still asked for tools after ``MPAI["TOOL_MAX_ITERATIONS"]`` rounds of
    tool calls in one turn (its last calls are not run). The text so far is saved."""

    code = "tool_iterations_exceeded"
    status_code = 502
    default_detail = (
        "The assistant kept looking things up without answering; please ask again, "
        "perhaps more specifically."
    )
