"""The demo's membership site reaches the assistant through its context sections."""

from __future__ import annotations

import datetime

import pytest

from config import settings as demo_settings
from config.context import help_articles, matching_articles, membership
from config.membership import DEFAULT_PLAN, PLANS, next_renewal, plan_for
from mpai.chat.context import ContextRequest
from mpai.chat.pipeline import ChatPipeline
from mpai.providers.offline import OfflineProvider

QUESTION = "What does my membership include, and how can I upgrade to the annual plan?"


@pytest.fixture
def demo_sections(settings):
    demo = demo_settings.MPAI
    settings.MPAI = {
        **settings.MPAI,
        "CONTEXT_SECTIONS": demo["CONTEXT_SECTIONS"],
        "CONTEXT_PRIORITIES": demo["CONTEXT_PRIORITIES"],
    }


def ask(user, content: str) -> str:
    pipeline = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0))
    result = pipeline.complete(user=user, content=content, use_cache=False)
    assert result.status == "complete"
    return result.message.content


def test_the_demo_user_holds_the_default_plan_and_others_their_mapped_one(make_user):
    assert plan_for(make_user("demo")).name == DEFAULT_PLAN == "Monthly"
    assert plan_for(make_user("annual")).name == "Annual"
    assert plan_for(make_user("someone-else")).name == "Monthly"


def test_the_sections_give_the_plan_and_the_matching_articles(make_user):
    request = ContextRequest(user=make_user("annual"), conversation=None, query=QUESTION)
    text = membership(request)
    assert text.splitlines()[:2] == ["plan: Annual", f"price: {PLANS['Annual'].price}"]
    assert "- Early access to new courses" in text
    articles = help_articles(request)
    assert articles is not None
    assert articles.startswith("### Upgrading to the annual plan\n")
    assert articles.count("### ") == 3


def test_questions_about_nothing_in_the_help_centre_get_no_articles():
    assert matching_articles("Recommend a haiku about autumn leaves") == []


def test_renewals_fall_on_the_joining_day_or_the_months_last_day():
    monthly, annual, free = PLANS["Monthly"], PLANS["Annual"], PLANS["Free"]
    joined = datetime.date(2024, 1, 31)
    assert next_renewal(monthly, joined, datetime.date(2025, 2, 3)) == datetime.date(2025, 2, 28)
    assert next_renewal(annual, joined, datetime.date(2025, 2, 3)) == datetime.date(2026, 1, 31)
    assert next_renewal(free, joined, datetime.date(2025, 2, 3)) is None


@pytest.mark.django_db
def test_the_pipeline_answers_the_membership_question_with_the_users_plan(demo_sections, make_user):
    reply = ask(make_user("demo"), QUESTION)
    assert reply.startswith("You're on the **Monthly** plan ($12/month).")
    for benefit in PLANS["Monthly"].benefits:
        assert f"- {benefit}" in reply
    assert "From the help article **Upgrading to the annual plan**:" in reply
    assert "Switch to Annual" in reply

    annual = ask(make_user("annual"), "Which plan am I on?")
    assert annual.startswith("You're on the **Annual** plan")


@pytest.mark.django_db
def test_the_pipeline_answers_a_how_to_question_with_the_help_article(demo_sections, make_user):
    reply = ask(make_user("demo"), "How do I reset my password?")
    assert reply.startswith("From the help article **Resetting your password**:")
