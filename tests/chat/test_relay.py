"""The pipeline relaying a provider stream that ends early, with the provider over real
HTTP (tests/fake_openai.py)."""

from __future__ import annotations

import pytest

from mpai.chat.pipeline import ChatPipeline
from mpai.models import Message
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db


@pytest.fixture
def http_pipeline(settings, fake_openai):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {"base_url": fake_openai.base_url, "backoff_initial": 0.001},
        },
    }
    return ChatPipeline()


def test_a_cut_off_stream_is_saved_as_an_error_with_its_partial_text(
    http_pipeline, fake_openai, user
):
    fake_openai.stream_truncated(["Our plans ", "start at"])
    deltas: list[str] = []
    result = drive(
        http_pipeline.stream(user=user, content="What plans do you have?"), deltas.append
    )
    assert "".join(deltas) == "Our plans start at"
    assert result.status == "error"
    assert result.error is not None
    assert result.error.code == "provider_unavailable"
    assert result.partial_message_id == result.message.pk
    saved = Message.objects.get(pk=result.message.pk)
    assert (saved.status, saved.content, saved.error_code) == (
        "error",
        "Our plans start at",
        "provider_unavailable",
    )
    assert len(fake_openai.requests) == 1  # not retried once the body was handed out
