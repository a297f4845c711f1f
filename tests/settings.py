"""Settings for the test suite: real PostgreSQL and a private Redis server.

Kept apart from ``config/`` (the demo project). The Redis locations below are
placeholders: the session fixture ``redis_server`` in ``tests/conftest.py`` starts a
private ``redis-server`` on a free port and points CACHES and CHANNEL_LAYERS at it,
so nothing here ever flushes the shared Redis at 6379.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "tests-only-not-secret"
# The demo project (config.settings) refuses its development key with DEBUG off; the
# demo processes tests start (manage.py, uvicorn, celery) inherit this one.
os.environ.setdefault("DJANGO_SECRET_KEY", SECRET_KEY)
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "config.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",  # manage.py spectacular (OpenAPI schema)
    "drf_spectacular_sidecar",  # Swagger UI files for /api/mpai/v1/docs/
    "mpai",
]

MIDDLEWARE = [
    # First: X-Response-Time and the HTTP latency histogram cover all the others.
    "mpai.metrics.middleware.ResponseTimeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# The test database name carries the run's id, so two runs never drop each other's
# database; pytest-django adds its xdist suffix on top (CONTRACTS.md, last section).
RUN_ID = os.environ.setdefault("MPAI_TEST_RUN_ID", str(os.getpid()))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get(
            "MPAI_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/mpai"
        ),
        conn_max_age=0,
    )
}
DATABASES["default"]["TEST"] = {"NAME": f"test_mpai_{RUN_ID}"}

_PLACEHOLDER_REDIS = "redis://127.0.0.1:1"  # replaced by the redis_server fixture
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"{_PLACEHOLDER_REDIS}/0",
        "KEY_PREFIX": "mpai-tests",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": f"{_PLACEHOLDER_REDIS}/1", "socket_timeout": 30}]},
    }
}

ASGI_APPLICATION = "config.asgi.application"
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
LOGIN_URL = "/accounts/login/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # OpenAPI 3 of the whole site by drf-spectacular (mpai's own schema view needs none).
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

CELERY_BROKER_URL = "memory://"
CELERY_RESULT_BACKEND = "cache+memory://"
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True

MPAI = {
    "PROVIDER": {
        "BACKEND": "mpai.providers.offline.OfflineProvider",
        "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0},
    },
    # Roomy by default; the rate-limit tests set their own buckets.
    "RATE_LIMIT": {"CAPACITY": 10_000, "REFILL_RATE": 1_000},
    # Off for the suite: every chat test would record figures from a background thread
    # into a test database it does not own; the metrics tests turn it on.
    "METRICS_ENABLED": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"mpai": {"handlers": ["console"], "level": "WARNING"}},
}
