"""mpai's layered cache: a Django cache backend and the seed's grouped API.

- :class:`LayeredCache` (``"BACKEND": "mpai.cache.LayeredCache"``): memory, Redis and
  database layers behind Django's cache contract; see :mod:`mpai.cache.backend`.
- :func:`get`, :func:`set`, :func:`delete`, :func:`delete_group`, :func:`get_or_set`,
  :func:`stats`: the grouped API over ``settings.MPAI["CACHE_ALIAS"]``; see
  :mod:`mpai.cache.grouped`.
"""

from mpai.cache.backend import LayeredCache
from mpai.cache.grouped import delete, delete_group, get, get_or_set, set, stats

__all__ = ["LayeredCache", "delete", "delete_group", "get", "get_or_set", "set", "stats"]
