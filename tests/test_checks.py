import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mpai.checks import check_budget, check_installed_apps, check_provider


def ids(messages):
    return [m.id for m in messages]


def test_default_configuration_passes():
    assert check_provider() == []
    assert check_budget() == []
    assert check_installed_apps() == []
    call_command("check")


def test_bad_provider_is_e001(settings):
    settings.MPAI = {**settings.MPAI, "PROVIDER": {"BACKEND": "nowhere.Provider"}}
    assert ids(check_provider()) == ["mpai.E001"]
    with pytest.raises(SystemCheckError):
        call_command("check")


def test_unknown_provider_option_is_e001(settings):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {"BACKEND": "mpai.providers.openai.OpenAIProvider", "OPTIONS": {"bogus": 1}},
    }
    assert ids(check_provider()) == ["mpai.E001"]


def test_budget_must_be_positive_e002(settings):
    settings.MPAI = {**settings.MPAI, "MAX_INPUT_TOKENS": 1000, "REPLY_RESERVE_TOKENS": 1000}
    assert ids(check_budget()) == ["mpai.E002"]


def test_missing_app_is_e003(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "channels"]
    assert ids(check_installed_apps()) == ["mpai.E003"]
