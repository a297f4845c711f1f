"""Hook-style signals at each measurement point of a chat request.

The Django equivalent of WordPress's ``do_action()`` hooks at each measurement point
(README, "Signals"). Every signal is sent with ``sender`` (the
pipeline class) and the keyword arguments:

- ``trace``: :class:`mpai.chat.trace.Trace`, the request id and monotonic timestamps
  in nanoseconds (``time.monotonic_ns()``), one per point below;
- ``user``: the user the request is for;
- ``conversation``: the :class:`mpai.models.Conversation`;

plus those named beside each signal. Signals are sent with ``send_robust``: a
receiver that raises is logged and never breaks the chat. Receivers run in the
thread that streams the reply and must not block.
"""

from django.dispatch import Signal

# A filter, not a measurement point: sent while the context is built, before the
# token budget is applied, so receivers may add, change or remove entries of
# ``context.sections`` (mpai.chat.context.Section) in place; the Django equivalent of
# a WordPress ``mpai_chat_context`` filter. Sent with sender (the builder class),
# context (mpai.chat.context.Context) and request (mpai.chat.context.ContextRequest).
# Receivers run in connection order; exceptions are logged, never raised.
context_building = Signal()

# The messages for the provider are ready.
# Extra kwargs: messages (list of {"role", "content"}), model (str).
context_built = Signal()

# Just before the HTTP request goes out; once per request (retries: trace.attempts).
# Extra kwargs: request (mpai.providers.ChatRequest).
api_request_sent = Signal()

# The provider's status line and headers have arrived; the body is not read yet.
# Extra kwargs: attempts (int, HTTP requests made including retries).
api_response_received = Signal()

# The stream has ended and the reply is assembled.
# Extra kwargs: text (str), finish_reason (str | None), usage (mpai.providers.Usage | None).
response_processed = Signal()

# One tool call of the reply ended (MPAI["TOOLS"]; the calls of a round run at once,
# so this is sent for each once the round is over, in the calls' order).
# Extra kwargs: name (str, the function the model called), call_id (str), status
# ("ok" | "error" | "cancelled"), duration_ms (float, ms), error_code (str | None,
# a code of mpai.tools.execution or the tool's ToolError.code).
tool_called = Signal()

# The reply is saved and the final frame sent.
# Extra kwargs: message (mpai.models.Message), status (str), error_code (str | None),
# timings_ms (dict of float ms, the keys of chat.completed's timings_ms).
request_complete = Signal()

# Send it when a user's membership changes (a subscription starts, lapses, changes
# plan) so mpai drops the user's cached profile (as a MemberPress site would on
# ``mepr-event-transaction-completed``). Arguments: sender (the class or
# module sending it) and user (a user instance, or its primary key).
membership_changed = Signal()
