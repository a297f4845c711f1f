import logging
from types import SimpleNamespace

import pytest

from mpai.chat.slowlog import level_for, log_stage_timings
from tests.chat.turning import drive


@pytest.mark.parametrize(
    ("seconds", "level"),
    [
        (0.0, logging.DEBUG),
        (0.999, logging.DEBUG),
        (1.0, logging.INFO),
        (5.0, logging.INFO),
        (5.001, logging.WARNING),
    ],
)
def test_levels_follow_the_seed(seconds, level):
    assert level_for(seconds) == level


def test_each_stage_is_logged_with_its_name(caplog):
    caplog.set_level(logging.DEBUG, logger="mpai.slow")
    timings = {
        "context": 2.0,
        "api_wait": 1500.0,
        "first_token": 6000.0,
        "generation": 10.0,
        "processing": 1.0,
        "total": 7600.0,
    }
    log_stage_timings(trace=SimpleNamespace(request_id="r1"), timings_ms=timings)
    levels = {r.stage: r.levelno for r in caplog.records}
    assert levels == {
        "context": logging.DEBUG,
        "api_wait": logging.INFO,
        "first_token": logging.WARNING,
        "generation": logging.DEBUG,
        "processing": logging.DEBUG,
        "total": logging.WARNING,
    }
    assert "first_token took 6.000 s" in caplog.text


def test_connected_to_request_complete(user, db, caplog):
    from mpai.chat.pipeline import ChatPipeline
    from mpai.providers.offline import OfflineProvider

    caplog.set_level(logging.DEBUG, logger="mpai.slow")
    pipeline = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply="hi"))
    drive(pipeline.stream(user=user, content="hello"))
    assert {r.stage for r in caplog.records} >= {"total", "context"}
