from django.apps import AppConfig


class MpaiConfig(AppConfig):
    name = "mpai"
    verbose_name = "AI assistant"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connect receivers only; no database or network work here.
        from mpai import signals  # noqa: F401
