"""Settings of the demo project, driven by environment variables.

Unset variables mean the embedded default: SQLite, local-memory
cache, in-memory channel layer, eager Celery and the offline provider, so that
``make run`` works with no server process. See README, "Configuration".

DEBUG is off unless ``DJANGO_DEBUG=1``, and with DEBUG off the demo refuses to start
on its development secret key (README, "Security defaults of the demo").
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
# Files the demo writes at run time (the secret key `make run` generates, Celery beat's
# schedule): git-ignored, outside the source tree.
DATA_DIR = Path(os.environ.get("MPAI_DATA_DIR") or BASE_DIR / ".data")


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


DEV_SECRET_KEY = "dev-only-insecure-key-change-me"


def secret_key() -> str:
    """``DJANGO_SECRET_KEY``, else the key `make run` wrote to ``DATA_DIR/secret_key``."""
    key = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if key:
        return key
    try:
        return (DATA_DIR / "secret_key").read_text().strip() or DEV_SECRET_KEY
    except FileNotFoundError:
        return DEV_SECRET_KEY


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = secret_key()
if SECRET_KEY == DEV_SECRET_KEY and not DEBUG:
    raise ImproperlyConfigured(
        "The demo's development SECRET_KEY is refused with DEBUG off: set DJANGO_SECRET_KEY "
        f"(or write one to {DATA_DIR / 'secret_key'}, as `make run` does), or set "
        "DJANGO_DEBUG=1 on a development machine."
    )
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
CSRF_TRUSTED_ORIGINS = [
    origin for origin in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if origin
]

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
    "drf_spectacular_sidecar",  # Swagger UI's files for /api/mpai/v1/docs/, served locally
    "csp",
    "mpai",
]

MIDDLEWARE = [
    # First: X-Response-Time and the HTTP latency histogram cover all the others.
    "mpai.metrics.middleware.ResponseTimeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# --- security headers and cookies (README, "Security defaults of the demo") ---------------
# The pages load their scripts and styles from /static/ only (no inline code) and talk to
# the same host: fetch /api/mpai/... and the websocket (CSP Level 3: 'self' also allows
# ws:/wss: to the page's own host).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
# Served over HTTPS (DJANGO_HTTPS=1): cookies only over TLS, and HSTS.
_https = env_bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = _https
CSRF_COOKIE_SECURE = _https
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000")) if _https else 0
if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", False):
    # Only behind a proxy that sets X-Forwarded-Proto itself (and strips the client's).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- database: DATABASE_URL (PostgreSQL) or the embedded SQLite file -----------------
DATABASE_URL = os.environ.get("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # psycopg 3's pool: no new connection (about 4–6 ms) per request.
        # Sized for the stream threads: a turn holds a connection only while it reads
        # and saves, not while the provider streams.
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": int(os.environ.get("MPAI_DB_POOL_MAX", "20")),
            "timeout": 10,
        }
        # Test each pooled connection before handing it out (Django passes psycopg's
        # ConnectionPool.check_connection): after a database restart or
        # pg_terminate_backend, idle connections are dead, and each would fail a request.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # A read replica of it (README, "Deployment"): chat-history reads during requests
    # go there (mpai.db_router), except a user's own for a few seconds after they wrote.
    DATABASE_REPLICA_URL = os.environ.get("DATABASE_REPLICA_URL")
    if DATABASE_REPLICA_URL:
        DATABASES["replica"] = dj_database_url.parse(DATABASE_REPLICA_URL)
        DATABASES["replica"].setdefault("OPTIONS", {}).update(
            DATABASES["default"].get("OPTIONS", {})
        )
        DATABASES["replica"]["CONN_HEALTH_CHECKS"] = True
        # Tests run on the primary's test database (Django's "Testing primary/replica
        # configurations").
        DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
        DATABASE_ROUTERS = ["mpai.db_router.ReplicaRouter"]
        MIDDLEWARE.insert(
            MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
            "mpai.db_router.ReplicaUserMiddleware",
        )
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("MPAI_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            # Concurrent chats write from several threads: take the write lock at BEGIN
            # and wait for it instead of failing with "database is locked" (found by
            # mpai_loadtest: 5 of 60 turns failed with 20 users before this).
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# --- Redis: REDIS_URL, one server, one logical database per use ---------------------
# Or REDIS_SENTINELS (README, "Deployment"): the same four uses, each through Redis
# Sentinel to whichever server is the master of REDIS_SENTINEL_MASTER; it wins over
# REDIS_URL when both are set.
REDIS_URL = os.environ.get("REDIS_URL", "").rstrip("/")


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """``"host1:26379,host2:26379"`` -> ``[("host1", 26379), ("host2", 26379)]``.

    A missing port is Sentinel's default, 26379.

    Raises:
        ImproperlyConfigured: a port that is not a number.
    """
    sentinels = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not port.isdigit():
            raise ImproperlyConfigured(f"REDIS_SENTINELS: bad host:port {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    return sentinels


REDIS_SENTINELS = parse_sentinels(os.environ.get("REDIS_SENTINELS", ""))
REDIS_SENTINEL_MASTER = os.environ.get("REDIS_SENTINEL_MASTER", "mymaster")
# AUTH of the Sentinel processes themselves, and of the Redis servers they point to.
REDIS_SENTINEL_PASSWORD = os.environ.get("REDIS_SENTINEL_PASSWORD") or None
REDIS_PASSWORD = os.environ.get("REDIS_PASSWORD") or None
# Two sites on one Redis database must not read each other's keys (ids start at 1 in
# every database): each keeps its own prefix.
CACHE_KEY_PREFIX = os.environ.get("MPAI_CACHE_KEY_PREFIX", "mpai-demo")
# Celery's connection to the broker: a dead broker socket is noticed within 30 s.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
}
if REDIS_SENTINELS:
    # Timeouts of the connections to the Sentinels (s): asking who the master is.
    _sentinel_kwargs: dict[str, object] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    if REDIS_SENTINEL_PASSWORD:
        _sentinel_kwargs["password"] = REDIS_SENTINEL_PASSWORD

    def _django_redis_sentinel(db: int, timeout: float) -> dict[str, object]:
        """A django-redis cache on database ``db`` of the master, found through the
        Sentinels (django-redis's README, "Use the sentinel connection factory")."""
        options: dict[str, object] = {
            "CLIENT_CLASS": "django_redis.client.SentinelClient",
            "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
            "SENTINELS": REDIS_SENTINELS,
            "SENTINEL_KWARGS": _sentinel_kwargs,
            "SOCKET_CONNECT_TIMEOUT": timeout,
            "SOCKET_TIMEOUT": timeout,
        }
        if REDIS_PASSWORD:
            options["PASSWORD"] = REDIS_PASSWORD
        # A one-URL list: the SentinelClient then keeps a single pool, on the master
        # (a string LOCATION would also read from replicas, which may lag behind the
        # layered cache's invalidations).
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": [f"redis://{REDIS_SENTINEL_MASTER}/{db}"],
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": options,
        }

    _redis_layer = _django_redis_sentinel(0, 0.25)
    CACHES = {
        # The layered cache as below, its Redis layer through Sentinel.
        "default": {
            "BACKEND": "mpai.cache.LayeredCache",
            "LOCATION": "",
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {
                "LAYERS": [
                    {"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"},
                    {
                        "NAME": "redis",
                        "BACKEND": _redis_layer["BACKEND"],
                        "LOCATION": _redis_layer["LOCATION"],
                        "OPTIONS": _redis_layer["OPTIONS"],
                    },
                    {
                        "NAME": "database",
                        "BACKEND": "mpai.cache.database.DatabaseLayer",
                        "LOCATION": "mpai_cache",
                    },
                ]
            },
        },
        # The raw Redis connection of the rate limiter and the quota counters
        # (MPAI["RATE_LIMIT"]["CACHE"] below); 0.5 s timeouts, as with a REDIS_URL.
        "redis": _django_redis_sentinel(0, 0.5),
    }
    _layer_host: dict[str, object] = {
        "sentinels": REDIS_SENTINELS,
        "master_name": REDIS_SENTINEL_MASTER,
        "sentinel_kwargs": _sentinel_kwargs,
        "db": 1,
        "socket_timeout": 30,
        "max_connections": 1000,
    }
    if REDIS_PASSWORD:
        _layer_host["password"] = REDIS_PASSWORD
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_layer_host]},
        }
    }
    # Celery's sentinel transport: every Sentinel as one URL, joined by ";".
    _auth = f":{quote(REDIS_PASSWORD, safe='')}@" if REDIS_PASSWORD else ""
    CELERY_BROKER_URL = ";".join(f"sentinel://{_auth}{h}:{p}/2" for h, p in REDIS_SENTINELS)
    CELERY_RESULT_BACKEND = ";".join(f"sentinel://{_auth}{h}:{p}/3" for h, p in REDIS_SENTINELS)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        master_name=REDIS_SENTINEL_MASTER, sentinel_kwargs=_sentinel_kwargs
    )
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
        "master_name": REDIS_SENTINEL_MASTER,
        "sentinel_kwargs": _sentinel_kwargs,
    }
    CELERY_TASK_ALWAYS_EAGER = False
elif REDIS_URL:
    # mpai's layered cache: in-process memory, Redis /0, then the database table
    # mpai_cache (created by mpai's migrations).
    CACHES = {
        "default": {
            "BACKEND": "mpai.cache.LayeredCache",
            "LOCATION": f"{REDIS_URL}/0",
            "KEY_PREFIX": CACHE_KEY_PREFIX,
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # Explicit socket_timeout above BZPOPMIN's 5 s (channels_redis #422).
                "hosts": [
                    {"address": f"{REDIS_URL}/1", "socket_timeout": 30, "max_connections": 1000}
                ]
            },
        }
    }
    CELERY_BROKER_URL = f"{REDIS_URL}/2"
    CELERY_RESULT_BACKEND = f"{REDIS_URL}/3"
    CELERY_TASK_ALWAYS_EAGER = False
else:
    # The layered cache without a Redis layer: memory, then the database.
    CACHES = {
        "default": {
            "BACKEND": "mpai.cache.LayeredCache",
            "LOCATION": "",
            "KEY_PREFIX": CACHE_KEY_PREFIX,
        }
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_RESULT_BACKEND = "cache+memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE = {
    # The daily history cleanup (mpai_cleanup): chat history older than the retention period.
    "mpai-cleanup-chat-history": {"task": "mpai.cleanup_chat_history", "schedule": 24 * 3600.0},
    # Weekly VACUUM (ANALYZE) of mpai's tables on PostgreSQL (mpai.chat.maintenance).
    "mpai-maintain-chat-tables": {
        "task": "mpai.maintain_chat_tables",
        "schedule": 7 * 24 * 3600.0,
    },
    # Titles for new conversations, asked of the fast model in batches.
    "mpai-generate-conversation-titles": {
        "task": "mpai.generate_conversation_titles",
        "schedule": 3600.0,
    },
    # The health checks (mpai.health): MPAI["HEALTH"]["INTERVAL"] documents the period;
    # the demo keeps the default, hourly.
    "mpai-run-health-checks": {"task": "mpai.run_health_checks", "schedule": 3600.0},
    # Usage rows past MPAI["USAGE_RETENTION_DAYS"] (mpai.usage).
    "mpai-cleanup-usage": {"task": "mpai.cleanup_usage", "schedule": 24 * 3600.0},
}
# Beat's schedule file stays out of the working tree (its folder is made by the scheduler).
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULER = "config.celery:DemoBeatScheduler"

# --- mpai ----------------------------------------------------------------------------
_provider_url = os.environ.get("MPAI_PROVIDER_BASE_URL")
_model = os.environ.get("MPAI_PROVIDER_MODEL", "gpt-4o" if _provider_url else "offline-1")
MPAI = {
    "PROVIDER": (
        {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {
                "base_url": _provider_url,
                "api_key": os.environ.get("MPAI_PROVIDER_API_KEY", ""),
            },
        }
        if _provider_url
        else {"BACKEND": "mpai.providers.offline.OfflineProvider", "OPTIONS": {}}
    ),
    "MODEL": _model,
    "FAST_MODEL": os.environ.get("MPAI_PROVIDER_FAST_MODEL") or _model,
    # History reads on the replica (DATABASE_REPLICA_URL); a user's own for this many
    # seconds after they wrote stay on the primary: keep it above the replica's lag.
    "READ_REPLICA": "replica" if "replica" in DATABASES else None,
    "READ_REPLICA_PIN_SECONDS": float(os.environ.get("MPAI_READ_REPLICA_PIN_SECONDS", "5")),
    # The token bucket runs in Redis (one Lua script) when there is one; otherwise on
    # the default cache, for this one process. Through Sentinel: the "redis" cache's
    # connection (django-redis), which follows the master.
    "RATE_LIMIT": (
        {"CACHE": "redis"}
        if REDIS_SENTINELS
        else {"REDIS_URL": f"{REDIS_URL}/0"}
        if REDIS_URL
        else {}
    ),
    # The demo's membership site (config/membership.py): mpai's default sections plus
    # the user's plan and the help articles matching the question (config/context.py).
    # These two dicts replace mpai's, so the defaults are listed again.
    "CONTEXT_SECTIONS": {
        "user_info": "mpai.chat.sections.user_info",
        "current_page": "mpai.chat.sections.current_page",
        "membership": "config.context.membership",
        "help_articles": "config.context.help_articles",
        "site_data": "mpai.chat.sections.site_data",
        "system_info": "mpai.chat.sections.system_info",
    },
    "CONTEXT_PRIORITIES": {
        "user_query": 1,
        "history": 2,
        "membership": 3,
        "help_articles": 4,
        "user_info": 5,
        "current_page": 6,
        "site_data": 7,
        "system_info": 8,
    },
    # Tools the assistant may call (OpenAI function calling) over the demo's
    # memberships, plans and help centre (config/tools.py).
    "MEMBERSHIP_ADAPTER": "config.tools.DemoMembershipAdapter",
    "TOOLS": [
        "mpai.tools.membership.get_my_memberships",
        "mpai.tools.membership.list_plans",
        "mpai.tools.membership.search_help_articles",
    ],
    # Quotas by the demo's plans (mpai.usage; the plan comes from the adapter above).
    "QUOTAS": {
        "default": {"messages_per_day": 50, "tokens_per_day": None, "tokens_per_month": None},
        "Free": {"messages_per_day": 10, "tokens_per_day": 20_000, "tokens_per_month": None},
        "Monthly": {"messages_per_day": 100, "tokens_per_day": None, "tokens_per_month": 2_000_000},
        "Annual": {"messages_per_day": 200, "tokens_per_day": None, "tokens_per_month": None},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # OpenAPI 3 of the whole site by drf-spectacular (mpai's own schema view needs none).
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
# None: signing out shows registration/logged_out.html ("You have been signed out").
LOGOUT_REDIRECT_URL = None

# --- email: password-reset links (and mpai's health alerts) -------------------------
# EMAIL_HOST set: send through that SMTP server; unset: print each email on the console
# (the reset link shows in `make run`'s output).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "").strip()
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
    EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)  # STARTTLS, usually port 587
    EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # implicit TLS, usually port 465
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
EMAIL_TIMEOUT = 10  # seconds: a slow mail server fails the request instead of hanging it
DEFAULT_FROM_EMAIL = os.environ.get(
    "DEFAULT_FROM_EMAIL", "Members' Club <no-reply@members-club.example>"
)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / ".staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"mpai": {"level": os.environ.get("MPAI_LOG_LEVEL", "INFO")}},
}
