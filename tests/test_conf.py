"""mpai.conf: dict options merged over their defaults, import strings resolved, reloads."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from mpai.chat.tokens import estimate_tokens, get_estimator
from mpai.conf import DEFAULTS, IMPORT_STRINGS, MERGED_DICTS, MpaiSettings, mpai_settings


def shout_tokens(text: str) -> int:
    return len(text)


def test_a_sites_dict_is_merged_over_the_default_dict(settings):
    settings.MPAI = {"RATE_LIMIT": {"CAPACITY": 3}, "CACHE_TIMEOUTS": {"user_context": 60}}

    rate_limit, timeouts = mpai_settings.RATE_LIMIT, mpai_settings.CACHE_TIMEOUTS
    assert rate_limit == {**DEFAULTS["RATE_LIMIT"], "CAPACITY": 3}
    assert timeouts == {**DEFAULTS["CACHE_TIMEOUTS"], "user_context": 60}
    assert DEFAULTS["RATE_LIMIT"]["CAPACITY"] == 10  # the defaults are not written to


@pytest.mark.parametrize("value", [None, {}])
def test_a_missing_or_empty_dict_gives_the_defaults(settings, value):
    settings.MPAI = {"RATE_LIMIT": value}
    rate_limit = mpai_settings.RATE_LIMIT
    assert rate_limit == DEFAULTS["RATE_LIMIT"]
    assert rate_limit is not DEFAULTS["RATE_LIMIT"]  # a copy: a caller cannot change them
    settings.MPAI = {}
    timeouts = mpai_settings.CACHE_TIMEOUTS
    assert timeouts == DEFAULTS["CACHE_TIMEOUTS"]


def test_a_merged_option_that_is_not_a_dict_is_refused():
    conf = MpaiSettings()
    conf._user_settings = {"RATE_LIMIT": ["CAPACITY", 3]}
    with pytest.raises(ImproperlyConfigured, match=r'MPAI\["RATE_LIMIT"\] must be a dict'):
        _ = conf.RATE_LIMIT


def test_every_merged_and_import_string_option_has_a_default():
    assert all(isinstance(DEFAULTS[name], dict) for name in MERGED_DICTS)
    assert all(name in DEFAULTS for name in IMPORT_STRINGS)


def test_an_import_string_is_resolved_on_access(settings):
    assert mpai_settings.TOKEN_ESTIMATOR is estimate_tokens
    settings.MPAI = {"TOKEN_ESTIMATOR": "tests.test_conf.shout_tokens"}
    assert mpai_settings.TOKEN_ESTIMATOR is shout_tokens
    assert get_estimator() is shout_tokens


def test_an_import_string_option_also_takes_the_object_itself(settings):
    settings.MPAI = {"TOKEN_ESTIMATOR": shout_tokens}
    assert get_estimator() is shout_tokens


def test_an_import_string_that_cannot_be_imported_names_the_option(settings):
    settings.MPAI = {"TOKEN_ESTIMATOR": "tests.test_conf.nowhere"}
    with pytest.raises(ImproperlyConfigured, match=r'MPAI\["TOKEN_ESTIMATOR"\]') as caught:
        _ = mpai_settings.TOKEN_ESTIMATOR
    assert isinstance(caught.value.__cause__, ImportError)


def test_values_are_kept_until_the_setting_changes(settings):
    settings.MPAI = {"RATE_LIMIT": {"CAPACITY": 3}}
    first: Any = mpai_settings.RATE_LIMIT
    assert mpai_settings.RATE_LIMIT is first  # computed once per configuration
    settings.MPAI = {"RATE_LIMIT": {"CAPACITY": 4}}  # setting_changed: reloaded
    assert mpai_settings.RATE_LIMIT["CAPACITY"] == 4
