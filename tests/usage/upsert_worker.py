"""A process that adds usage rows, for the concurrency test of the upserts.

Run as ``python -m tests.usage.upsert_worker <user_id> <turns>`` with
``MPAI_TEST_DATABASE_URL`` naming the test database. It prints ``ready``, waits for a
line on stdin (so every worker starts at once), adds ``turns`` turns of 3 + 2 tokens
costing 0.0000001 each to today's row of (user_id, "model-c"), then prints ``done``.
"""

from __future__ import annotations

import datetime
import os
import sys
from decimal import Decimal


def main(user_id: int, turns: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from mpai.usage.store import add_usage

    day = datetime.date(2030, 1, 1)
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(turns):
        add_usage(
            user_id=user_id,
            day=day,
            model="model-c",
            prompt_tokens=3,
            completion_tokens=2,
            cost=Decimal("0.0000001"),
        )
    print("done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
