from django.apps import AppConfig


class MpaiConfig(AppConfig):
    name = "mpai"
    verbose_name = "AI assistant"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connect receivers and register checks only; no database or network work here.
        from mpai import checks, signals  # noqa: F401  (checks registers on import)
        from mpai.cache.receivers import connect_receivers
        from mpai.chat.slowlog import log_stage_timings

        connect_receivers()

        signals.request_complete.connect(
            log_stage_timings, dispatch_uid="mpai.chat.slowlog.log_stage_timings"
        )
