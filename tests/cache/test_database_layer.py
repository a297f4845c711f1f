"""``mpai.cache.database.DatabaseLayer``: one statement per write, a periodic cull.

Against the real PostgreSQL test database. Each test that counts or culls rows gets a
table of its own, made inside the test's transaction (PostgreSQL rolls the DDL back
with it), and a fake clock, so it cannot see other tests' rows or cull schedules.
At the end, Django's cache contract runs again with this class as the only shared
layer (no Redis), so add, incr and the stampede locks go through it too.
"""

from __future__ import annotations

import base64
import inspect
import itertools
import pickle
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from django.core.cache import CacheKeyWarning
from django.core.cache.backends.db import DatabaseCache
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from mpai.cache import LayeredCache
from mpai.cache import config as cache_config
from mpai.cache.database import DEFAULT_CULL_INTERVAL, DEFAULT_MAX_ENTRIES, DatabaseLayer
from mpai.cache.layers import SharedLayer
from tests.cache import conftest as cache_conftest
from tests.cache import test_contract

pytestmark = pytest.mark.django_db

_tables = itertools.count(1)


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> str:
    """A fresh cache table, dropped with the test's transaction."""
    name = f"mpai_test_l3_{next(_tables)}"
    call_command("createcachetable", name, verbosity=0)
    return name


@pytest.fixture
def make_layer(table: str) -> Callable[..., DatabaseLayer]:
    """``make_layer(**options)``: a DatabaseLayer on ``table`` with a fake clock whose
    first write has already culled (so counts below see only the write itself)."""

    def make(**options: Any) -> DatabaseLayer:
        key_function = options.pop("KEY_FUNCTION", None)
        params: dict[str, Any] = {"OPTIONS": options}
        if key_function is not None:
            params["KEY_FUNCTION"] = key_function
        layer = DatabaseLayer(table, params)
        layer.clock = FakeClock()
        layer._cull_if_due("default")  # the first write of a process culls; done here
        return layer

    return make


def rows(table: str, where: str = "TRUE") -> int:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT COUNT(*) FROM "{table}" WHERE {where}')
        return int(cursor.fetchone()[0])


def row(table: str, key: str) -> tuple[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT value, expires FROM "{table}" WHERE cache_key = %s', [key])
        found = cursor.fetchone()
    assert found is not None, f"no row for {key!r}"
    return found[0], found[1]


def statements(ctx: CaptureQueriesContext) -> list[str]:
    return [query["sql"] for query in ctx.captured_queries]


# -- one statement per write ---------------------------------------------------------


def test_a_set_is_one_upsert_where_djangos_class_needs_three_statements_and_savepoints(
    make_layer: Callable[..., DatabaseLayer], table: str
) -> None:
    layer = make_layer()
    for value in ("first", "overwrite"):
        with CaptureQueriesContext(connection) as ctx:
            layer.set("k", value, 60)
        [sql] = statements(ctx)
        assert sql.startswith(f'INSERT INTO "{table}"')
        assert 'ON CONFLICT ("cache_key") DO UPDATE' in sql
    django_cache = DatabaseCache(table, {"OPTIONS": {"MAX_ENTRIES": 100}})
    with CaptureQueriesContext(connection) as ctx:
        django_cache.set("k", "django", 60)
    assert len(statements(ctx)) >= 3  # COUNT, SELECT, UPDATE (and its savepoint)


def test_set_many_add_and_touch_are_one_statement_each(
    make_layer: Callable[..., DatabaseLayer],
) -> None:
    layer = make_layer()
    with CaptureQueriesContext(connection) as ctx:
        assert layer.set_many({f"k{i}": i for i in range(50)}, 60) == []
        assert layer.add("new", 1, 60) is True
        assert layer.add("new", 2, 60) is False
        assert layer.touch("new", 120) is True
        assert layer.touch("missing", 120) is False
    assert len(statements(ctx)) == 5
    assert layer.get_many([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
    assert layer.get("new") == 1


def test_a_large_set_many_takes_one_statement_per_300_rows(
    make_layer: Callable[..., DatabaseLayer], table: str
) -> None:
    layer = make_layer()
    data = {f"k{i:04d}": i for i in range(700)}
    with CaptureQueriesContext(connection) as ctx:
        layer.set_many(data, 60)
    assert len(statements(ctx)) == 3
    assert layer.get_many(list(data)) == data
    assert rows(table) == 700


def test_set_many_of_keys_that_make_the_same_key_keeps_the_last_one(
    make_layer: Callable[..., DatabaseLayer],
) -> None:
    # PostgreSQL refuses an upsert that affects one row twice; a loop of sets would not.
    layer = make_layer(KEY_FUNCTION=lambda key, prefix, version: key.lower())
    layer.set_many({"K": 1, "k": 2}, 60)
    assert layer.get("k") == 2


# -- rows Django's class reads, and the other way round --------------------------------


VALUES: list[Any] = [
    "text",
    "ünïcødé ✓",
    b"\x00\xffbytes",
    {"nested": [1, 2.5, None, (3, 4)]},
    None,
    0,
    "x" * 5_000,
]


@pytest.mark.parametrize("timeout", [None, 3600])
def test_rows_are_the_rows_djangos_class_writes(table: str, timeout: float | None) -> None:
    layer = DatabaseLayer(table, {})
    django_cache = DatabaseCache(table, {})
    # One wall clock for both, so the expiry (whole seconds, as Django) is the same.
    with mock.patch("django.core.cache.backends.base.time.time", return_value=1_900_000_000.4):
        for index, value in enumerate(VALUES):
            layer.set(f"layer{index}", value, timeout)
            django_cache.set(f"django{index}", value, timeout)
    for index, value in enumerate(VALUES):
        written = row(table, layer.make_key(f"layer{index}"))
        assert written == row(table, django_cache.make_key(f"django{index}"))
        assert pickle.loads(base64.b64decode(written[0])) == value
        assert django_cache.get(f"layer{index}", "miss") == value
        assert layer.get(f"django{index}", "miss") == value


def test_set_many_rows_are_readable_by_djangos_class(table: str) -> None:
    layer = DatabaseLayer(table, {})
    layer.set_many({"a": 1, "b": [2]}, None)
    assert DatabaseCache(table, {}).get_many(["a", "b", "c"]) == {"a": 1, "b": [2]}


def test_a_set_overwrites_value_and_expiry(make_layer: Callable[..., DatabaseLayer]) -> None:
    layer = make_layer()
    django_cache = DatabaseCache(layer._table, {})
    layer.set("k", "forever", None)
    layer.set("k", "for a minute", 60)
    assert layer.get("k") == "for a minute"
    assert django_cache.get("k") == "for a minute"
    assert rows(layer._table, "cache_key = ':1:k'") == 1
    assert rows(layer._table, "cache_key = ':1:k' AND expires < now() + interval '1 hour'") == 1
    layer.set("k", "expired", -10)  # an already-past timeout overwrites, then misses
    assert layer.get("k", "miss") == "miss"


# -- expiry --------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, -3600])
def test_a_past_or_zero_timeout_stores_an_expired_row(
    make_layer: Callable[..., DatabaseLayer], timeout: float
) -> None:
    layer = make_layer()
    layer.set("k", "v", timeout)
    assert layer.get("k") is None
    assert layer.has_key("k") is False
    assert DatabaseCache(layer._table, {}).get("k") is None


def test_add_replaces_an_expired_row_and_only_that(
    make_layer: Callable[..., DatabaseLayer],
) -> None:
    layer = make_layer()
    layer.set("expired", "old", -10)
    layer.set("live", "old", 60)
    assert layer.add("expired", "new", 60) is True
    assert layer.add("live", "new", 60) is False
    assert layer.add("absent", "new", 60) is True
    assert layer.get_many(["expired", "live", "absent"]) == {
        "expired": "new",
        "live": "old",
        "absent": "new",
    }


def test_touch_sets_a_new_expiry_as_djangos_class(
    make_layer: Callable[..., DatabaseLayer],
) -> None:
    layer = make_layer()
    layer.set("k", "v", 60)
    assert layer.touch("k", None) is True
    assert row(layer._table, layer.make_key("k"))[1].year == 9999
    assert layer.touch("k", 0) is True  # Django: a zero timeout expires the entry
    assert layer.get("k") is None
    assert layer.touch("never-set", 60) is False


# -- culling -------------------------------------------------------------------------


def fill(table: str, count: int, expired: bool = False, prefix: str = "old") -> None:
    """Insert ``count`` rows straight into ``table`` (live for a day, or expired)."""
    interval = "- interval '1 hour'" if expired else "+ interval '1 day'"
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" (cache_key, value, expires) '
            f"SELECT %s || lpad(g::text, 6, '0'), 'x', now() {interval} "
            "FROM generate_series(1, %s) g",
            [prefix, count],
        )


def test_culls_at_most_once_per_interval(make_layer: Callable[..., DatabaseLayer]) -> None:
    layer = make_layer(MAX_ENTRIES=10, CULL_INTERVAL=60)
    table, clock = layer._table, layer.clock
    assert isinstance(clock, FakeClock)
    fill(table, 30)
    for step in (1.0, 58.0):  # 59 s after the last cull: no cull, the table stays big
        clock.now += step
        with CaptureQueriesContext(connection) as ctx:
            layer.set(f"at{clock.now}", 1, 60)
        assert len(statements(ctx)) == 1
    assert rows(table) == 32
    clock.now += 1.0  # 60 s: this set culls first
    with CaptureQueriesContext(connection) as ctx:
        layer.set("due", 1, 60)
    assert any(sql.startswith("SELECT COUNT(*)") for sql in statements(ctx))
    assert rows(table) <= 10 + 1  # at most MAX_ENTRIES old rows, and the new one
    assert layer.get("due") == 1  # a write never culls its own row
    with CaptureQueriesContext(connection) as ctx:
        layer.set("right-after", 1, 60)
    assert len(statements(ctx)) == 1


def test_the_cull_interval_is_per_process_not_per_instance(table: str) -> None:
    clock = FakeClock()
    first, second = DatabaseLayer(table, {}), DatabaseLayer(table, {})
    first.clock = second.clock = clock
    first.set("a", 1)  # culls: the first write of this process on this table
    with CaptureQueriesContext(connection) as ctx:
        second.set("b", 1)  # another thread's instance, same process: not due
    assert len(statements(ctx)) == 1


@pytest.mark.parametrize(
    ("old_rows", "cull_frequency", "left"),
    [
        (33, 3, 22),  # as Django: 1/CULL_FREQUENCY of the rows go
        (100, 3, 10),  # more if 1/CULL_FREQUENCY would leave more than MAX_ENTRIES
        (33, 0, 0),  # as Django: CULL_FREQUENCY 0 empties the table
    ],
)
def test_a_cull_keeps_at_most_max_entries(
    make_layer: Callable[..., DatabaseLayer], old_rows: int, cull_frequency: int, left: int
) -> None:
    layer = make_layer(MAX_ENTRIES=30 if old_rows == 33 else 10, CULL_FREQUENCY=cull_frequency)
    assert isinstance(layer.clock, FakeClock)
    fill(layer._table, old_rows)
    layer.clock.now += DEFAULT_CULL_INTERVAL
    layer.set("new", 1, 60)
    assert rows(layer._table, "cache_key LIKE 'old%%'") == left
    assert layer.get("new") == 1


def test_a_table_within_max_entries_loses_only_its_expired_rows(
    make_layer: Callable[..., DatabaseLayer],
) -> None:
    layer = make_layer(MAX_ENTRIES=100)
    assert isinstance(layer.clock, FakeClock)
    fill(layer._table, 20, expired=True, prefix="dead")
    fill(layer._table, 20, prefix="live")
    layer.set("expired-by-set", 1, -5)
    assert rows(layer._table) == 41  # not due: expired rows stay (get() misses them)
    layer.clock.now += DEFAULT_CULL_INTERVAL
    layer.set("new", 1, 60)
    assert rows(layer._table, "expires < now()") == 0
    assert rows(layer._table) == 21


def test_an_error_during_the_cull_does_not_fail_the_set(
    make_layer: Callable[..., DatabaseLayer], caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer(MAX_ENTRIES=10)
    assert isinstance(layer.clock, FakeClock)
    fill(layer._table, 20, expired=True, prefix="dead")
    fill(layer._table, 20, prefix="live")
    layer.clock.now += DEFAULT_CULL_INTERVAL
    # A real database error in the middle of the cull (PostgreSQL aborts the statement).
    broken_sql = mock.patch.object(
        connection.ops, "cache_key_culling_sql", return_value="SELECT no_such_column FROM %s"
    )
    with broken_sql, caplog.at_level("WARNING", logger="mpai.cache"):
        layer.set("k", "v", 60)
    assert layer.get("k") == "v"  # the set went through, the transaction is usable
    assert rows(layer._table) == 41  # the failed cull was rolled back as a whole
    assert any("culling the cache table" in r.getMessage() for r in caplog.records)
    with CaptureQueriesContext(connection) as ctx:
        layer.set("k2", "v", 60)  # the next try is an interval later
    assert len(statements(ctx)) == 1


def test_an_error_outside_sql_during_the_cull_does_not_fail_the_set(
    make_layer: Callable[..., DatabaseLayer],
) -> None:
    layer = make_layer()
    clock = layer.clock
    assert isinstance(clock, FakeClock)
    failing = mock.patch.object(DatabaseLayer, "_cull_table", side_effect=RuntimeError("boom"))
    with failing as cull:
        clock.now += DEFAULT_CULL_INTERVAL
        layer.set("k", "v", 60)
        clock.now += DEFAULT_CULL_INTERVAL
        layer.set_many({"a": 1}, 60)
        clock.now += DEFAULT_CULL_INTERVAL
        assert layer.add("b", 1, 60) is True
    assert cull.call_count == 3
    assert layer.get_many(["k", "a", "b"]) == {"k": "v", "a": 1, "b": 1}


# -- errors, options, configuration ----------------------------------------------------


def test_a_row_that_cannot_be_written_raises(make_layer: Callable[..., DatabaseLayer]) -> None:
    layer = make_layer()
    # cache_key is varchar(255); Django's class would drop this set silently.
    with pytest.warns(CacheKeyWarning), pytest.raises(DataError), transaction.atomic():
        layer.set("k" * 300, "v", 60)
    layer.set("k", "v", 60)
    assert layer.get("k") == "v"


def test_defaults_and_options(table: str) -> None:
    layer = DatabaseLayer(table, {})
    assert layer._max_entries == DEFAULT_MAX_ENTRIES == 100_000
    assert layer.cull_interval == DEFAULT_CULL_INTERVAL == 60.0
    assert layer._cull_frequency == 3
    tuned = DatabaseLayer(table, {"OPTIONS": {"MAX_ENTRIES": 500, "CULL_INTERVAL": 5}})
    assert (tuned._max_entries, tuned.cull_interval) == (500, 5.0)


@pytest.mark.parametrize("interval", [-1, "60", True, float("nan"), float("inf"), None])
def test_a_bad_cull_interval_is_refused(table: str, interval: Any) -> None:
    with pytest.raises(ImproperlyConfigured, match="CULL_INTERVAL"):
        DatabaseLayer(table, {"OPTIONS": {"CULL_INTERVAL": interval}})


def shared_layer(cache: LayeredCache, name: str) -> SharedLayer:
    return next(layer for layer in cache.stack.layers if layer.name == name)


def test_it_is_the_default_database_layer_and_djangos_class_stays_djangos(
    configure: Any,
) -> None:
    default = LayeredCache("", {"KEY_PREFIX": "default-l3"})
    backend = shared_layer(default, "database").backend
    assert isinstance(backend, DatabaseLayer)
    assert backend._table == cache_config.DEFAULT_TABLE == "mpai_cache"
    assert shared_layer(default, "database").is_database
    explicit = configure()  # the layer spec names django.core.cache.backends.db.DatabaseCache
    backend = shared_layer(explicit, "database").backend
    assert isinstance(backend, DatabaseCache)
    assert not isinstance(backend, DatabaseLayer)


def test_createcachetable_makes_a_database_layers_table(settings: Any) -> None:
    name = f"mpai_test_l3_{next(_tables)}"
    settings.CACHES = {
        **settings.CACHES,
        "l3": {"BACKEND": "mpai.cache.database.DatabaseLayer", "LOCATION": name},
    }
    call_command("createcachetable", verbosity=0)
    assert name in connection.introspection.table_names()
    layer = DatabaseLayer(name, {})
    layer.set("k", "v")
    assert layer.get("k") == "v"


# -- Django's cache contract again, with this layer as the only shared layer ----------


@pytest.fixture
def cache(configure: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[LayeredCache]:
    """The contract's layered cache without Redis, its database layer a DatabaseLayer;
    fails the test if that layer counted an error."""
    layered_params = cache_conftest.layered_params

    def with_this_layer(*args: Any, **kwargs: Any) -> dict[str, Any]:
        params = layered_params(*args, **kwargs)
        for spec in params["OPTIONS"]["LAYERS"]:
            if spec["NAME"] == "database":
                spec["BACKEND"] = cache_config.DATABASE_LAYER_BACKEND
        return params

    monkeypatch.setattr(cache_conftest, "layered_params", with_this_layer)
    layered = configure(redis=False)
    assert isinstance(shared_layer(layered, "database").backend, DatabaseLayer)
    yield layered
    assert layered.stats()["database"]["errors"] == 0


# Every contract test that does not look into Redis, collected here once more (it then
# gets the `cache` fixture above).
for _name, _test in vars(test_contract).items():
    if (
        _name.startswith("test_")
        and inspect.isfunction(_test)
        and "raw_redis" not in inspect.signature(_test).parameters
    ):
        globals()[f"test_contract_{_name.removeprefix('test_')}"] = _test
del _name, _test
