"""The offline provider answers from the context it is given (no database needed)."""

from __future__ import annotations

from mpai.chat.batch import BATCH_PROMPT, ask_batched
from mpai.chat.sections import render
from mpai.chat.titles import TITLE_INSTRUCTIONS, _question, clean_title
from mpai.providers.base import ChatRequest
from mpai.providers.offline import (
    OfflineProvider,
    context_sections,
    packaged_replies,
    rank_articles,
    title_from,
)

MEMBERSHIP = "\n".join(
    [
        "plan: Annual",
        "price: $120/year",
        "renewal: every year, next on 1 March 2027",
        "benefits:",
        "- All member-only videos",
        "- Early access to new courses",
    ]
)
ARTICLES = "\n\n".join(
    [
        "### Upgrading to the annual plan\n"
        "Open Account and choose Switch to Annual. You pay the annual price today.",
        "### Resetting your password\nChoose Forgot password on the sign-in page.",
        "### Cancelling your membership\nOpen Account and choose Cancel membership.",
    ]
)
SYSTEM = "\n\n".join(
    [
        "You are the assistant of a membership website.",
        render("user_info", "username: ann"),
        render("membership", MEMBERSHIP),
        render("help_articles", ARTICLES),
    ]
)


def provider(**options) -> OfflineProvider:
    return OfflineProvider(first_token_ms=0, tokens_per_second=0, **options)


def ask(question: str, *, history: list[dict[str, str]] | None = None, **options) -> str:
    messages = [{"role": "system", "content": SYSTEM}, *(history or [])]
    messages.append({"role": "user", "content": question})
    return provider(**options).complete(ChatRequest(model="offline-1", messages=messages)).text


def test_the_sections_are_the_headed_blocks_of_the_system_message():
    sections = context_sections([{"role": "system", "content": SYSTEM}])
    assert [heading for heading, _ in sections] == ["User info", "Membership", "Help articles"]
    assert sections[1][1] == MEMBERSHIP


def test_a_membership_question_names_the_plan_and_its_benefits():
    reply = ask("What does my membership include?")
    assert (
        reply.splitlines()[0]
        == "You're on the **Annual** plan ($120/year). Here's what it includes:"
    )
    assert "- All member-only videos" in reply
    assert "- Early access to new courses" in reply
    assert "next on 1 March 2027" in reply
    assert "Switch to Annual" not in reply  # no how-to was asked


def test_a_how_to_question_answers_with_the_matching_article():
    reply = ask("How do I upgrade to the annual plan?")
    assert reply.splitlines()[0] == "From the help article **Upgrading to the annual plan**:"
    assert "- Open Account and choose Switch to Annual." in reply
    assert "- You pay the annual price today." in reply
    assert "Annual** plan" not in reply  # not the membership answer


def test_a_question_with_both_gets_both():
    reply = ask("What does my membership include, and how can I upgrade to the annual plan?")
    first, second = reply.split("\n\nFrom the help article ")
    assert "**Annual**" in first
    assert "- All member-only videos" in first
    assert second.startswith("**Upgrading to the annual plan**")


def test_a_follow_up_is_read_with_the_question_before_it():
    history = [
        {"role": "user", "content": "I forgot my password, what now?"},
        {"role": "assistant", "content": "..."},
    ]
    assert "Forgot password" in ask("and how do I cancel?", history=history)
    assert "Resetting your password" in ask("and then?", history=history)


def test_a_question_the_context_does_not_cover_gets_a_packaged_reply():
    reply = ask("Write a short poem about the sea")
    assert reply in packaged_replies()


def test_without_context_sections_the_reply_is_a_packaged_one():
    messages = [{"role": "user", "content": "What does my membership include?"}]
    reply = provider().complete(ChatRequest(model="offline-1", messages=messages)).text
    assert reply in packaged_replies()


def test_replies_are_deterministic():
    for question in ("What does my membership include?", "How do I upgrade?", "Tell me a joke"):
        assert ask(question) == ask(question)


def test_a_fixed_reply_still_wins():
    assert ask("What does my membership include?", reply="Fixed.") == "Fixed."


def test_articles_sharing_no_word_with_the_question_do_not_match():
    articles = [("Resetting your password", "Choose Forgot password.")]
    assert rank_articles("How do I bake bread?", articles) == []
    assert rank_articles("reset my password", articles)[0][1] == 0


def test_a_title_request_gets_a_title_from_the_first_message():
    question = _question(
        "What does my membership include, and how can I upgrade to the annual plan?",
        "You're on the Monthly plan.",
    )
    messages = [
        {"role": "system", "content": TITLE_INSTRUCTIONS},
        {"role": "user", "content": question},
    ]
    title = provider().complete(ChatRequest(model="offline-1", messages=messages)).text
    assert title == "Membership Include Upgrade Annual Plan"
    assert clean_title(title) == title


def test_batched_title_requests_get_numbered_titles():
    questions = [
        _question("How do I reset my password?", "Choose Forgot password."),
        _question("can you help me cancel my subscription", "Sure."),
    ]
    answers = ask_batched(questions, provider=provider(), instructions=TITLE_INSTRUCTIONS)
    assert [a.answer for a in answers] == ["Reset Password", "Help Cancel Subscription"]
    assert all(a.batched and a.error is None for a in answers)
    assert BATCH_PROMPT.startswith("Answer each numbered question")  # the shape it detects


def test_title_from_keeps_at_most_six_key_words():
    assert title_from("Please tell me how refunds, billing dates and renewals work for teams") == (
        "Refunds Billing Dates Renewals Work Teams"
    )
    assert title_from("What is it?") == "What Is It"
    assert title_from("") == "New conversation"
