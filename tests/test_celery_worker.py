"""A real Celery worker (the demo project's app) on the private Redis runs mpai's tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from celery import Celery
from django.utils import timezone

from mpai.models import Conversation, Message
from tests.asgi_server import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(redis_server, fake_openai_url):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.update(server_env(redis_server.url, fake_openai_url))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Celery("probe", broker=f"{redis_server.url}/2", backend=f"{redis_server.url}/3")
    yield client
    process.terminate()
    process.wait(timeout=20)


def test_worker_runs_the_retention_task_over_the_redis_broker(worker, user):
    conversation = Conversation.objects.create(owner=user)
    old = Message.objects.create(conversation=conversation, owner=user, role="user", content="x")
    Message.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    result = worker.send_task("mpai.cleanup_chat_history").get(timeout=60)
    assert result["messages_deleted"] == 1
    assert not Message.objects.filter(pk=old.pk).exists()


def test_worker_generates_titles_with_the_provider(worker, user, fake_openai):
    conversation = Conversation.objects.create(owner=user, title="how do i renew my plan")
    Message.objects.create(
        conversation=conversation, owner=user, role="user", content="how do i renew my plan"
    )
    Message.objects.create(
        conversation=conversation, owner=user, role="assistant", content="Go to Account."
    )
    fake_openai.json_reply("Renewing a plan")
    fake_openai.stream_reply(["Renewing a plan"])
    updated = worker.send_task("mpai.generate_conversation_titles").get(timeout=60)
    assert updated == 1
    conversation.refresh_from_db()
    assert conversation.title == "Renewing a plan"
