"""L1: the in-process memory layer of :class:`mpai.cache.LayeredCache`.

Where a PHP site keeps a per-request array, this is a process-wide store shared by every
thread and every ``caches[alias]`` instance with the same layers (Django builds one
cache object per thread, as ``LocMemCache`` shares its dict by ``LOCATION``).

Properties:

- bounded by entries (``MAX_ENTRIES``) and by bytes (``MAX_BYTES``, the pickled value
  plus the key plus :data:`ENTRY_OVERHEAD` bytes per entry); least recently used
  entries are evicted first; values larger than ``MAX_ITEM_BYTES`` are not kept;
- per-entry expiry on the monotonic clock, never later than the entry's wall-clock
  expiry in the shared layers (optionally capped, see ``cap`` below);
- values are kept pickled and unpickled on every read, so a caller that mutates a
  returned object does not change what the cache holds;
- thread and asyncio safe: every method takes one ``threading.Lock`` for a few
  dictionary operations and never awaits or does I/O while holding it;
- an invalidation generation makes "fill after a read from a slower layer" safe: a
  fill is dropped when the key was invalidated after the read began (the race
  described for cashews' client-side cache).

Expired entries stay readable through :meth:`MemoryStore.get_stale` for
``stale_seconds`` (used only by ``get_or_set`` during a stampede); invalidation
removes them at once, so a deleted value is never served stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, NamedTuple

#: Bytes counted per entry on top of the pickled value and the key.
ENTRY_OVERHEAD = 100

_monotonic = time.monotonic
_time = time.time
_INF = float("inf")


class _Entry(NamedTuple):
    payload: bytes
    expires: float  # monotonic seconds; inf = never
    wall_expires: float | None  # the value's true expiry (time.time()), None = never
    size: int


def mono_expiry(wall_expires: float | None, cap: float | None) -> float:
    """Convert a wall-clock expiry to a monotonic one, optionally capped.

    Args:
        wall_expires: ``time.time()`` seconds, or None for never.
        cap: the longest lifetime in seconds, or None for no cap.

    Returns:
        ``time.monotonic()`` seconds (``inf`` for never).
    """
    now = _monotonic()
    remaining = _INF if wall_expires is None else wall_expires - _time()
    if cap is not None and cap < remaining:
        remaining = cap
    return now + remaining


class MemoryStore:
    """A bounded LRU of pickled values with per-entry expiry.

    Args:
        max_entries: most entries kept (0 disables the store).
        max_bytes: most bytes kept (see module docstring for what is counted).
        max_item_bytes: larger values are not kept.
        stale_seconds: how long an expired entry stays available to
            :meth:`get_stale`.
        recent_invalidations: how many invalidated keys are remembered to reject
            fills that raced with them.

    Raises:
        ValueError: for a negative size.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_item_bytes: int = 1024 * 1024,
        stale_seconds: float = 30.0,
        recent_invalidations: int = 4096,
    ) -> None:
        if min(max_entries, max_bytes, max_item_bytes) < 0 or stale_seconds < 0:
            raise ValueError("memory store sizes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.stale_seconds = stale_seconds
        self._lock = threading.Lock()
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._generation = 0
        # key -> generation of its last invalidation; keys older than the floor are
        # forgotten, and a read that began before the floor is not allowed to fill.
        self._recent: OrderedDict[str, int] = OrderedDict()
        self._recent_max = recent_invalidations
        self._floor = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.invalidations = 0
        self.fills_dropped = 0

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """Return the pickled value of a fresh entry (and mark it recently used).

        Counts a hit or a miss. Returns None when absent or expired.
        """
        # The hot path of every L1 hit: index access, no helper calls.
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                if entry[1] > _monotonic():
                    self._data.move_to_end(key)
                    self.hits += 1
                    return entry[0]
                if entry[1] + self.stale_seconds <= _monotonic():
                    self._remove(key)
            self.misses += 1
            return None

    def peek(self, key: str) -> tuple[bytes, float | None] | None:
        """Return ``(payload, wall_expires)`` of a fresh entry without counting."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry.expires <= _monotonic():
                return None
            return entry.payload, entry.wall_expires

    def get_stale(self, key: str) -> bytes | None:
        """Return the pickled value of an entry expired less than ``stale_seconds`` ago.

        Fresh entries are returned too. Invalidated entries are gone, never stale.
        """
        with self._lock:
            entry = self._data.get(key)
            if entry is None or entry.expires + self.stale_seconds <= _monotonic():
                return None
            return entry.payload

    @property
    def generation(self) -> int:
        """The invalidation counter; pass it to :meth:`fill` after a slow read."""
        return self._generation

    # -- writes --------------------------------------------------------------------

    def store(
        self, key: str, payload: bytes, wall_expires: float | None, cap: float | None = None
    ) -> None:
        """Keep a value written by this process (also voids racing fills of ``key``)."""
        with self._lock:
            self._mark_invalidated(key)
            self._put(key, payload, wall_expires, cap)

    def fill(
        self,
        key: str,
        payload: bytes,
        wall_expires: float | None,
        generation: int,
        cap: float | None = None,
    ) -> bool:
        """Keep a value read from a slower layer, unless ``key`` changed meanwhile.

        Args:
            generation: :attr:`generation` read before the slower layer was asked.

        Returns:
            True if stored; False if an invalidation of ``key`` (or a clear) happened
            after ``generation`` was read.
        """
        with self._lock:
            if generation < self._floor or self._recent.get(key, -1) > generation:
                self.fills_dropped += 1
                return False
            self._put(key, payload, wall_expires, cap)
            return True

    def add(
        self, key: str, payload: bytes, wall_expires: float | None, cap: float | None = None
    ) -> bool:
        """Keep a value only if no fresh entry exists (L1-only ``add``)."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None and entry.expires > _monotonic():
                return False
            self._mark_invalidated(key)
            self._put(key, payload, wall_expires, cap)
            return True

    def invalidate(self, keys: list[str]) -> bool:
        """Drop entries (fresh or stale) and void racing fills.

        Returns:
            True if at least one of the keys had a fresh entry.
        """
        existed = False
        with self._lock:
            now = _monotonic()
            for key in keys:
                self._mark_invalidated(key)
                entry = self._data.get(key)
                if entry is not None:
                    existed = existed or entry.expires > now
                    self._remove(key)
            self.invalidations += len(keys)
        return existed

    def clear(self) -> None:
        """Drop every entry and void every fill in progress."""
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self._generation += 1
            self._floor = self._generation
            self._recent.clear()
            self.invalidations += 1

    # -- introspection -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and sizes: hits, misses, evictions, invalidations, entries, bytes."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "invalidations": self.invalidations,
                "fills_dropped": self.fills_dropped,
                "entries": len(self._data),
                "bytes": self._bytes,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
            }

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes currently counted against ``max_bytes``."""
        return self._bytes

    # -- internals (lock held) -----------------------------------------------------

    def _mark_invalidated(self, key: str) -> None:
        self._generation += 1
        recent = self._recent
        recent[key] = self._generation
        recent.move_to_end(key)
        if len(recent) > self._recent_max:
            _, generation = recent.popitem(last=False)
            self._floor = generation

    def _put(self, key: str, payload: bytes, wall_expires: float | None, cap: float | None) -> None:
        data = self._data
        old = data.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        size = len(payload) + len(key) + ENTRY_OVERHEAD
        if size > self.max_item_bytes or size > self.max_bytes or not self.max_entries:
            return
        left = _INF if wall_expires is None else wall_expires - _time()
        if cap is not None and cap < left:
            left = cap
        if left <= 0:
            return
        data[key] = _Entry(payload, _monotonic() + left, wall_expires, size)
        self._bytes += size
        if len(data) > self.max_entries or self._bytes > self.max_bytes:
            while len(data) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = data.popitem(last=False)
                self._bytes -= evicted.size
                self.evictions += 1

    def _remove(self, key: str) -> None:
        entry = self._data.pop(key)
        self._bytes -= entry.size
