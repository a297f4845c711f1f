import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from mpai.checks import (
    check_budget,
    check_import_strings,
    check_installed_apps,
    check_provider,
    check_unknown_settings,
)


def ids(messages):
    return [m.id for m in messages]


def test_default_configuration_passes():
    assert check_provider() == []
    assert check_budget() == []
    assert check_installed_apps() == []
    assert check_unknown_settings() == []
    assert check_import_strings() == []
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


def test_unknown_key_is_w001_naming_the_closest_known_key(settings):
    settings.MPAI = {**settings.MPAI, "MAX_MESAGE_LENGTH": 100}
    (warning,) = check_unknown_settings()
    assert warning.id == "mpai.W001"
    assert 'MPAI["MAX_MESAGE_LENGTH"]' in warning.msg
    assert warning.hint == 'Did you mean MPAI["MAX_MESSAGE_LENGTH"]?'
    call_command("check")  # a warning, not an error


def test_unknown_key_closest_match_is_case_blind(settings):
    settings.MPAI = {"rate_limit": {"CAPACITY": 1}}
    (warning,) = check_unknown_settings()
    assert warning.hint == 'Did you mean MPAI["RATE_LIMIT"]?'


def test_unknown_key_without_a_close_match_points_to_the_readme(settings):
    settings.MPAI = {"ZZZ": 1}
    (warning,) = check_unknown_settings()
    assert warning.id == "mpai.W001"
    assert "README" in warning.hint


def test_unknown_key_inside_rate_limit_or_provider_is_w001(settings):
    settings.MPAI = {
        "RATE_LIMIT": {"CAPACTY": 3, "REFILL_RATE": 1},
        "PROVIDER": {"BACKEND": "mpai.providers.offline.OfflineProvider", "OPTION": {}},
    }
    warnings = check_unknown_settings()
    assert ids(warnings) == ["mpai.W001", "mpai.W001"]
    assert [w.hint for w in warnings] == [
        'Did you mean MPAI["RATE_LIMIT"]["CAPACITY"]?',
        'Did you mean MPAI["PROVIDER"]["OPTIONS"]?',
    ]


def test_known_keys_and_open_dicts_give_no_w001(settings):
    # CACHE_TIMEOUTS and CONTEXT_SECTIONS take names of the site's own choosing.
    settings.MPAI = {
        **settings.MPAI,
        "CACHE_TIMEOUTS": {"my_group": 10},
        "CONTEXT_SECTIONS": {"my_section": None},
        "RATE_LIMIT": {"ENABLED": False},
    }
    assert check_unknown_settings() == []


def test_import_string_that_cannot_be_imported_is_e004(settings):
    assert check_import_strings() == []
    settings.MPAI = {**settings.MPAI, "TOKEN_ESTIMATOR": "nowhere.estimate"}
    (error,) = check_import_strings()
    assert error.id == "mpai.E004"
    assert 'MPAI["TOKEN_ESTIMATOR"]' in error.msg
    with pytest.raises(SystemCheckError):
        call_command("check")
