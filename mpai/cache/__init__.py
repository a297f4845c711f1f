"""mpai's layered cache: a generic Django cache backend.

- :class:`LayeredCache` (``"BACKEND": "mpai.cache.LayeredCache"``): memory, Redis and
  database layers behind Django's cache contract; see :mod:`mpai.cache.backend`.

The package imports nothing of mpai outside itself (README, "The layered cache"): any
Django project can use the backend, and what mpai caches in it, under which groups and
for how long, belongs to the code that caches.
"""

from mpai.cache.backend import LayeredCache

__all__ = ["LayeredCache"]
