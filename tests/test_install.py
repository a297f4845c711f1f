"""Installing mpai into a project of one's own (issue 9), as README's "Using mpai in
your own project" says.

The slow tests build mpai's wheel, install it into a fresh virtualenv, make a project
with ``django-admin startproject mysite``, apply README's ``mysite/...`` blocks word for
word (parsed from README.md, so the README and this test cannot drift apart), migrate,
run uvicorn on a free port, sign in over HTTP and chat over a real websocket.

The virtualenv reuses the suite's installed dependencies through a ``.pth`` file (no
PyPI round trip for Django, Channels, …) and gets mpai itself only from the wheel
(``pip install --no-deps``); a test checks that ``mpai`` is imported from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test.utils import override_settings
from django.urls import include, path
from websockets.sync.client import connect

from tests.redis_server import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "mysite"
USERNAME, PASSWORD = "member", "a-long-test-password-4711"
BLOCK = re.compile(
    r"```python\n# mysite/(?P<file>\S+?)(?P<append> \(append\))?\n(?P<body>.*?)```", re.S
)


def readme_blocks() -> list[tuple[str, bool, str]]:
    """README's ``# mysite/<file>`` python blocks of "Using mpai in your own project":
    ``(file, append, text)``."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using mpai in your own project\n", 1)[1].split("\n## ", 1)[0]
    blocks = [(m["file"], bool(m["append"]), m["body"]) for m in BLOCK.finditer(section)]
    assert {file for file, _, _ in blocks} == {"settings.py", "urls.py", "asgi.py"}, blocks
    return blocks


def run(args: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class Site:
    python: Path
    venv: Path
    project: Path
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws/mpai/chat/"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def sign_in(self) -> requests.Session:
        """Sign in through the chat page's redirect; return the signed-in session."""
        session = requests.Session()
        form = session.get(f"{self.url}/mpai/chat/", timeout=10)
        assert form.status_code == 200, form.text
        assert form.url == f"{self.url}/accounts/login/?next=/mpai/chat/"
        page = session.post(
            form.url,
            data={
                "username": USERNAME,
                "password": PASSWORD,
                "next": "/mpai/chat/",
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": form.url},
            timeout=10,
        )
        assert page.status_code == 200, page.text
        assert page.url == f"{self.url}/mpai/chat/"
        return session


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this suite's Django settings and paths."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "MPAI_", "PYTHON")) and key != "VIRTUAL_ENV"
    }
    return {**env, **extra}


def site_env(**extra: str) -> dict[str, str]:
    """The environment of the new project's commands."""
    return clean_env(DJANGO_SETTINGS_MODULE=f"{PROJECT}.settings", **extra)


def build_wheel(work: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the source (no build/ left in the checkout)."""
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "mpai",
        source / "mpai",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    dist = work / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source],
        cwd=work,
        env=clean_env(),
    )
    (wheel,) = dist.glob("mpai-*.whl")
    return wheel


def make_venv(work: Path, wheel: Path) -> Path:
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, env=clean_env())
    python = venv / "bin" / "python"
    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=work,
        env=clean_env(),
    ).strip()
    # The suite's dependencies, after the venv's own site-packages (mpai comes first).
    (Path(purelib) / "mpai-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel],
        cwd=work,
        env=clean_env(),
    )
    return python


def apply_readme(project: Path) -> None:
    for file, append, text in readme_blocks():
        path = project / PROJECT / file
        if append:
            path.write_text(path.read_text() + "\n" + text)
        else:
            path.write_text(text)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("install")
    python = make_venv(work, build_wheel(work))
    # django-admin startproject mysite, with the venv's Django
    run([python, "-m", "django", "startproject", PROJECT], cwd=work, env=clean_env())
    project = work / PROJECT
    apply_readme(project)
    env = site_env(DJANGO_SUPERUSER_PASSWORD=PASSWORD)
    run([python, "manage.py", "migrate", "--noinput"], cwd=project, env=env)
    run(
        [
            python,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            USERNAME,
            "--email",
            "m@example.com",
        ],
        cwd=project,
        env=env,
    )
    port = free_port()
    log = work / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "uvicorn",
                f"{PROJECT}.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=project,
            env=site_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    site = Site(python, work / "venv", project, f"http://127.0.0.1:{port}", log, process)

    def answers() -> bool:
        assert process.poll() is None, site.log_text()
        try:
            requests.get(f"{site.url}/accounts/login/", timeout=1)
        except requests.ConnectionError:
            return False
        return True

    try:
        wait_until(answers, timeout=30, interval=0.05, what="uvicorn answers")
        yield site
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mpai_comes_from_the_installed_wheel(site):
    location = run(
        [site.python, "-c", "import mpai; print(mpai.__file__)"], cwd=site.project, env=site_env()
    )
    assert Path(location.strip()).is_relative_to(site.venv)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_member_signs_in_and_gets_the_chat_page_with_its_static_files(site):
    session = site.sign_in()
    page = session.get(f"{site.url}/mpai/chat/", timeout=10)
    assert 'id="mpai-chat"' in page.text
    assert "Sign out" in page.text  # mpai.auth_urls gives the site a URL named logout
    for asset in ("mpai/chat.js", "mpai/chat.css"):
        response = session.get(f"{site.url}/static/{asset}", timeout=10)
        assert response.status_code == 200, asset
        assert len(response.content) > 100, asset


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_signing_in_without_next_lands_on_the_chat_page(site):
    session = requests.Session()
    form = session.get(f"{site.url}/accounts/login/", timeout=10)
    assert form.status_code == 200
    page = session.post(
        form.url,
        data={
            "username": USERNAME,
            "password": PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers={"Referer": form.url},
        timeout=10,
    )
    assert page.url == f"{site.url}/mpai/chat/"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_member_chats_over_a_real_websocket(site):
    session = site.sign_in()
    with connect(
        site.ws_url,
        origin=site.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={session.cookies['sessionid']}"},
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "chat.message", "conversation": None, "content": "Hello!"}))
        frames = [json.loads(ws.recv(timeout=60))]
        while frames[-1]["type"] in ("chat.started", "chat.delta"):
            frames.append(json.loads(ws.recv(timeout=60)))
    assert frames[0]["type"] == "chat.started"
    assert frames[-1]["type"] == "chat.completed", frames[-1]
    assert frames[-1]["status"] == "complete"
    deltas = [frame["text"] for frame in frames[1:-1]]
    assert deltas
    assert all(frame["type"] == "chat.delta" for frame in frames[1:-1])
    history = session.get(f"{site.url}/api/mpai/v1/chat-history/", timeout=10).json()
    assert history["results"][0]["content"] == "".join(deltas)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_signing_out_returns_to_the_sign_in_page(site):
    session = site.sign_in()
    page = session.post(
        f"{site.url}/accounts/logout/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{site.url}/mpai/chat/"},
        timeout=10,
    )
    assert page.status_code == 200
    assert page.url == f"{site.url}/accounts/login/"
    assert session.get(f"{site.url}/mpai/chat/", timeout=10).url.startswith(
        f"{site.url}/accounts/login/"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_uvicorn_runs_mpais_lifespan_handler(site):
    wait_until(lambda: "Application startup complete." in site.log_text(), what="startup logged")
    assert "unsupported" not in site.log_text()


# --- the load-test command names the extra it needs -----------------------------------


def test_mpai_loadtest_without_websockets_names_the_loadtest_extra(monkeypatch):
    import mpai

    monkeypatch.delitem(sys.modules, "mpai.loadtest", raising=False)
    monkeypatch.delattr(mpai, "loadtest", raising=False)
    for name in [name for name in sys.modules if name.split(".")[0] == "websockets"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "websockets", None)
    with pytest.raises(CommandError, match=re.escape('pip install "mpai[loadtest]"')):
        call_command("mpai_loadtest", "--users", "1", "--messages", "1")


# --- mpai's templates on a site with URLs of its own ----------------------------------


def urlconf(name: str, patterns: list[Any]) -> types.ModuleType:
    """A site's URLconf module made here (``ROOT_URLCONF`` takes a module too)."""
    module = types.ModuleType(name)
    module.urlpatterns = patterns  # type: ignore[attr-defined]
    return module


# mpai's URLs only: no URL named "logout" or "login".
SITE_URLCONF = urlconf("site_urls", [path("", include("mpai.urls"))])
# The same with mpai's sign-in pages.
AUTH_URLCONF = urlconf(
    "site_urls_with_auth",
    [path("accounts/", include("mpai.auth_urls")), path("", include("mpai.urls"))],
)


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=SITE_URLCONF)
def test_the_chat_page_renders_on_a_site_without_a_logout_url(client, user):
    client.force_login(user)
    page = client.get("/mpai/chat/")
    assert page.status_code == 200
    assert b'id="mpai-chat"' in page.content
    assert b"Sign out" not in page.content


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=SITE_URLCONF, MPAI={"LOGOUT_URL": "/members/bye/"})
def test_the_sign_out_button_posts_to_the_logout_url_setting(client, user):
    client.force_login(user)
    page = client.get("/mpai/chat/")
    assert b'action="/members/bye/"' in page.content


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=SITE_URLCONF, MPAI={"LOGOUT_URL": "no-such-url-name"})
def test_a_logout_url_setting_naming_a_missing_url_is_improperly_configured(client, user):
    client.force_login(user)
    with pytest.raises(ImproperlyConfigured, match="LOGOUT_URL"):
        client.get("/mpai/chat/")


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=AUTH_URLCONF)
def test_mpai_auth_urls_give_a_site_sign_in_and_sign_out(client, user):
    form = client.get("/accounts/login/?next=/mpai/chat/")
    assert form.status_code == 200
    assert form.templates[0].name == "mpai/login.html"
    signed_in = client.post(
        "/accounts/login/", {"username": user.username, "password": "pw", "next": "/mpai/chat/"}
    )
    assert signed_in.status_code == 302
    assert signed_in["Location"] == "/mpai/chat/"
    assert b'action="/accounts/logout/"' in client.get("/mpai/chat/").content
    signed_out = client.post("/accounts/logout/")
    assert signed_out.status_code == 302
    assert signed_out["Location"] == "/accounts/login/"
