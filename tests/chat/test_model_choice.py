import pytest

from mpai.chat.model_choice import choose_model


@pytest.fixture(autouse=True)
def models(settings):
    settings.MPAI = {
        **settings.MPAI,
        "MODEL": "big",
        "FAST_MODEL": "small",
        "FAST_MODEL_MAX_TOKENS": 1000,
    }


def test_short_simple_requests_use_the_fast_model():
    assert choose_model(query="What are your opening hours?", prompt_tokens=120) == "small"


def test_long_requests_use_the_capable_model():
    assert choose_model(query="What are your opening hours?", prompt_tokens=1000) == "big"


@pytest.mark.parametrize(
    "query",
    [
        "Please analyze my usage",
        "Compare the gold and silver plans",
        "Explain step by step",
        "```code```",
    ],
)
def test_complex_requests_use_the_capable_model(query):
    assert choose_model(query=query, prompt_tokens=50) == "big"


def test_fast_model_defaults_to_model(settings):
    settings.MPAI = {"MODEL": "only"}
    assert choose_model(query="hi", prompt_tokens=1) == "only"
