"""The demo project's security defaults (README, "Security defaults of the demo").

config/settings.py is imported in subprocesses with a chosen environment (it reads the
environment at import), and the demo is served by a real uvicorn process started with
``DJANGO_DEBUG`` unset, as a deployment that forgot it would be.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from rest_framework.authtoken.models import Token

from tests.asgi_server import ROOT, AsgiServer, server_env
from tests.waiting import wait_until

SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({name: getattr(s, name, None) for name in %r}, default=str))
"""
DEMO_ENV = ("DJANGO_", "MPAI_", "DATABASE_URL", "REDIS_URL", "CELERY_")


def demo_env(data_dir: Path, **env: str) -> dict[str, str]:
    """The environment with no demo setting of the caller's, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(DEMO_ENV)}
    return {
        **base,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MPAI_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(ROOT),
        **env,
    }


def import_settings(
    data_dir: Path, names: tuple[str, ...] = ("DEBUG",), **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS % (names,)],
        cwd=ROOT,
        env=demo_env(data_dir, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_of(data_dir: Path, *names: str, **env: str) -> dict[str, Any]:
    done = import_settings(data_dir, names, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- settings ---------------------------------------------------------------------------


def test_settings_refuse_the_development_key_with_debug_off(tmp_path):
    done = import_settings(tmp_path)  # neither DJANGO_DEBUG nor DJANGO_SECRET_KEY
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "DJANGO_SECRET_KEY" in done.stderr


def test_debug_is_off_when_django_debug_is_unset(tmp_path):
    assert settings_of(tmp_path, "DEBUG", DJANGO_SECRET_KEY="k" * 50) == {"DEBUG": False}


def test_debug_on_asked_for_allows_the_development_key(tmp_path):
    assert settings_of(tmp_path, "DEBUG", DJANGO_DEBUG="1") == {"DEBUG": True}


def test_make_generates_a_private_secret_key_that_the_settings_use(tmp_path):
    data = tmp_path / "data"
    key_file = data / "secret_key"
    subprocess.run(
        ["make", "--no-print-directory", f"MPAI_DATA_DIR={data}", str(key_file)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    key = key_file.read_text().strip()
    assert len(key) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings_of(data, "DEBUG", "SECRET_KEY") == {"DEBUG": False, "SECRET_KEY": key}


def test_https_switch_sets_secure_cookies_and_hsts(tmp_path):
    names = ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS")
    key = {"DJANGO_SECRET_KEY": "k" * 50}
    assert settings_of(tmp_path, *names, **key) == dict.fromkeys(names, False) | {
        "SECURE_HSTS_SECONDS": 0
    }
    assert settings_of(tmp_path, *names, DJANGO_HTTPS="1", **key) == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
    }
    proxied = settings_of(
        tmp_path, "SECURE_PROXY_SSL_HEADER", DJANGO_TRUST_X_FORWARDED_PROTO="1", **key
    )
    assert proxied == {"SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}


@pytest.mark.parametrize("redis_url", ["", "redis://127.0.0.1:1"])
def test_the_demo_cache_has_a_key_prefix(tmp_path, redis_url):
    key = {"DJANGO_SECRET_KEY": "k" * 50, "REDIS_URL": redis_url}
    default = settings_of(tmp_path, "CACHES", **key)["CACHES"]["default"]
    assert default["KEY_PREFIX"] == "mpai-demo"
    chosen = settings_of(tmp_path, "CACHES", MPAI_CACHE_KEY_PREFIX="site-b", **key)
    assert chosen["CACHES"]["default"]["KEY_PREFIX"] == "site-b"


def test_celery_beat_writes_its_schedule_to_the_data_dir_not_the_working_directory(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    log = (tmp_path / "beat.log").open("wb")
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "info"],
        cwd=work,
        env=demo_env(data, DJANGO_SECRET_KEY="k" * 50),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: beat.poll() is not None or list(data.glob("celerybeat-schedule*")),
            timeout=30,
            what="beat's schedule file",
        )
        assert beat.poll() is None, (tmp_path / "beat.log").read_text()
    finally:
        beat.terminate()
        beat.wait(timeout=10)
        log.close()
    assert list(work.iterdir()) == []
    assert not list(ROOT.glob("celerybeat-schedule*"))


# --- the demo served by uvicorn -----------------------------------------------------------


@pytest.fixture(scope="module")
def demo_server(django_db_setup, redis_server, fake_openai_url) -> Iterator[AsgiServer]:
    """The demo with ``DJANGO_DEBUG`` unset (the default a forgetful deployment gets)."""
    env = server_env(redis_server.url, fake_openai_url)
    env.pop("DJANGO_DEBUG", None)
    server = AsgiServer(env)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DJANGO_DEBUG", raising=False)
        server.start()
    try:
        yield server
    finally:
        server.stop()


def sign_in(server: AsgiServer, user: Any) -> requests.Session:
    """A browser-like session signed in through the login form."""
    password = "correct horse battery staple"
    user.password = make_password(password, hasher=PBKDF2PasswordHasher())  # the demo's hasher
    user.save(update_fields=["password"])
    session = requests.Session()
    login = f"{server.http_url}/accounts/login/"
    form = session.get(login, timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token, form.text
    response = session.post(
        login,
        data={
            "csrfmiddlewaretoken": token.group(1),
            "username": user.get_username(),
            "password": password,
            "next": "/mpai/chat/",
        },
        headers={"Referer": login},
        timeout=10,
    )
    assert response.url == f"{server.http_url}/mpai/chat/", response.text
    return session


@pytest.mark.django_db(transaction=True)
def test_chat_page_is_served_with_a_content_security_policy(demo_server, user):
    response = sign_in(demo_server, user).get(f"{demo_server.http_url}/mpai/chat/", timeout=10)
    assert response.status_code == 200
    assert 'id="mpai-chat"' in response.text
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in response.headers["Content-Security-Policy"].split(";")
        if directive.strip()
    }
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


@pytest.mark.django_db(transaction=True)
def test_deeply_nested_json_does_not_show_a_debug_page(demo_server, user):
    token = Token.objects.create(user=user)
    depth = 100_000
    response = requests.post(
        f"{demo_server.http_url}/api/mpai/v1/chat/",
        data='{"content": ' + "[" * depth + "]" * depth + "}",
        headers={"Authorization": f"Token {token.key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert "Traceback" not in response.text
    assert "DATABASE_URL" not in response.text
    assert "postgres://" not in response.text
