from django.apps import AppConfig


class MpaiConfig(AppConfig):
    name = "mpai"
    verbose_name = "AI assistant"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connect receivers and register checks only; no database or network work here.
        # Each receiver has a dispatch_uid, so calling ready() again connects nothing twice.
        from django.conf import settings
        from django.db.models.signals import post_delete, post_save

        from mpai import checks, signals  # noqa: F401  (checks registers on import)
        from mpai.chat import profile
        from mpai.chat.slowlog import log_slow_tool_call, log_stage_timings

        # The cached user context goes stale when the user or the membership changes.
        user_model = settings.AUTH_USER_MODEL
        post_save.connect(
            profile.on_user_saved,
            sender=user_model,
            dispatch_uid="mpai.chat.profile.user_saved",
        )
        post_delete.connect(
            profile.on_user_saved,
            sender=user_model,
            dispatch_uid="mpai.chat.profile.user_deleted",
        )
        signals.membership_changed.connect(
            profile.on_membership_changed,
            dispatch_uid="mpai.chat.profile.membership_changed",
        )

        signals.request_complete.connect(
            log_stage_timings, dispatch_uid="mpai.chat.slowlog.log_stage_timings"
        )
        signals.tool_called.connect(
            log_slow_tool_call, dispatch_uid="mpai.chat.slowlog.log_slow_tool_call"
        )

        # Turn metrics (mpai.metrics): recorded off the streaming thread, while
        # MPAI["METRICS_ENABLED"] (read on each turn, so override_settings works).
        from mpai.metrics import receivers

        receivers.connect()
        # Per-tool figures of the last hour in mpai's cache (mpai.tools.metrics), for
        # the health dashboard; written by a daemon thread, not the turn's.
        from mpai.tools.metrics import record_tool_call

        signals.tool_called.connect(
            record_tool_call, dispatch_uid="mpai.tools.metrics.record_tool_call"
        )
        from mpai.usage.recording import connect_usage_receivers  # usage, cost, quotas

        connect_usage_receivers()

        # Per-stage memory deltas (MPAI["MEMORY_PROFILING"], read on each signal) and,
        # when OpenTelemetry is installed, one span per turn (MPAI["TRACING"]); without
        # it nothing is connected and opentelemetry is never imported.
        from mpai.metrics import memory, tracing

        memory.connect_memory_receivers()
        tracing.connect_tracing()
