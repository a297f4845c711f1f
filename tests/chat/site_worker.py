"""One Django site in its own process, for the tests of sites sharing one Redis.

Run as ``python -m tests.chat.site_worker '<config json>'`` with
``MPAI_TEST_DATABASE_URL`` naming the site's own (migrated) database. The config holds:

- ``caches``: the site's ``CACHES``;
- ``flush``: empty the database first (ids start at 1 again, as on a new site);
- ``user``: ``{"username", "first_name", "email"}`` of the user to create (or reuse);
- ``messages``: what the user sends, one turn each, all in one conversation.

It prints one JSON line: ``{"user": pk, "conversation": pk, "prompts": [messages sent
to the provider, per turn], "replies": [...], "cached": [bool per turn], "checks": [ids
of the system checks' warnings]}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_site(database_url: str, config: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Run the worker for one site and return its JSON report.

    Raises:
        AssertionError: the worker failed (its stderr is in the message).
    """
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MPAI_TEST_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.chat.site_worker", json.dumps(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def main(config: dict[str, Any]) -> None:
    from django.conf import settings

    settings.CACHES = config["caches"]
    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.core import checks
    from django.core.management import call_command

    from mpai import signals
    from mpai.chat.pipeline import ChatPipeline

    if config.get("flush"):
        call_command("flush", interactive=False, verbosity=0)
    prompts: list[list[dict[str, str]]] = []

    def on_context(messages: list[dict[str, str]], **kwargs: Any) -> None:
        prompts.append(messages)

    signals.context_built.connect(on_context, weak=False)
    spec = config["user"]
    user, _ = get_user_model().objects.get_or_create(
        username=spec["username"],
        defaults={"first_name": spec.get("first_name", ""), "email": spec.get("email", "")},
    )
    pipeline = ChatPipeline()
    conversation_id = None
    replies, cached = [], []
    for text in config["messages"]:
        result = pipeline.complete(user=user, content=text, conversation_id=conversation_id)
        conversation_id = result.conversation_id
        deltas = [result.message.content]
        replies.append("".join(deltas))
        cached.append(result.cached)
    warnings = [m.id for m in checks.run_checks() if m.level == checks.WARNING]
    report = {
        "user": user.pk,
        "conversation": conversation_id,
        "prompts": prompts,
        "replies": replies,
        "cached": cached,
        "checks": warnings,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
