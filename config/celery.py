"""Celery app of the demo project: ``celery -A config worker`` / ``celery -A config beat``."""

import os
from pathlib import Path

from celery import Celery
from celery.beat import PersistentScheduler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class DemoBeatScheduler(PersistentScheduler):
    """Celery's file-backed scheduler, creating the folder of its schedule file first.

    The demo keeps the file under its data folder (``CELERY_BEAT_SCHEDULE_FILENAME``),
    not in the working directory, which is Celery's default.
    """

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()
