"""Live conversation memory thresholds (CONTRACTS.md, "Context and memory")."""

import math

import pytest

from mpai.chat.memory import ConversationMemory
from tests.chat.turning import drive


def fill(memory: ConversationMemory, pairs: int) -> None:
    for i in range(pairs):
        memory.append("user", f"q{i}")
        memory.append("assistant", f"a{i}")
        memory.end_turn()


def test_sizes_follow_the_seed_for_the_default_20_pairs():
    memory = ConversationMemory(max_pairs=20)
    assert memory.safe_size == 45
    assert memory.trim_to == 24


def test_not_trimmed_until_it_passes_one_and_a_half_safe_sizes():
    memory = ConversationMemory(max_pairs=20)
    fill(memory, 33)  # 66 messages <= 67.5
    assert len(memory.messages) == 66
    assert memory.trims == 0
    fill(memory, 1)  # 68 > 67.5
    assert memory.trims == 1
    assert len(memory.messages) == 24
    assert memory.messages[0]["role"] == "user"
    assert memory.messages[-1] == {"role": "assistant", "content": "a0"}


@pytest.mark.parametrize("max_pairs", [1, 3, 5, 7, 20])
def test_trim_keeps_the_newest_messages_starting_at_a_user_message(max_pairs):
    memory = ConversationMemory(max_pairs=max_pairs)
    memory.messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(100)
    ]
    memory.trim()
    keep = math.ceil(1.2 * max_pairs)
    assert len(memory.messages) in (keep, keep - 1)
    assert memory.messages[0]["role"] == "user"
    assert memory.messages[-1]["content"] == "99"


def test_at_two_safe_sizes_it_trims_at_once_mid_turn():
    memory = ConversationMemory(max_pairs=20)
    # Appends without end_turn (one very long turn of tool messages, say).
    for i in range(89):
        memory.append("user" if i % 2 == 0 else "assistant", str(i))
    assert memory.trims == 0
    memory.append("assistant", "89")  # the 90th message: 2 x 45
    assert memory.trims == 1
    assert len(memory.messages) <= 24


def test_trimming_never_touches_saved_messages(user, db):
    from mpai.chat.pipeline import ChatPipeline
    from mpai.models import Message
    from mpai.providers.offline import OfflineProvider

    pipeline = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply="ok"))
    pipeline_settings_pairs = 2  # safe size 9, trim past 13.5 to 3
    conversation_id = None
    from django.test import override_settings

    with override_settings(
        MPAI={"MEMORY_MAX_PAIRS": pipeline_settings_pairs, "RESPONSE_CACHE_ENABLED": False}
    ):
        for i in range(10):
            events = pipeline.stream(
                user=user, content=f"question {i}", conversation_id=conversation_id
            )
            conversation_id = events.turn.conversation.pk
            drive(events)
        memory = pipeline.memories[conversation_id]
        assert memory.trims >= 1
        assert len(memory.messages) < 14
    assert Message.objects.filter(conversation_id=conversation_id).count() == 20


def test_idle_time_uses_the_injected_clock():
    now = [1000.0]
    memory = ConversationMemory(clock=lambda: now[0])
    memory.append("user", "hi")
    now[0] += 3600
    assert memory.idle_for() == 3600
