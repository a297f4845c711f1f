"""The demo project's settings with ``MPAI`` options from ``MPAI_TEST_SETTINGS`` (JSON).

For end-to-end tests that need a server with, say, a short replay deadline:
``AsgiServer({..., "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
"MPAI_TEST_SETTINGS": json.dumps({"REPLAY_TIMEOUT_SECONDS": 2})})``.
"""

import json
import os

from config.settings import *  # noqa: F403
from config.settings import MPAI

_overrides = json.loads(os.environ.get("MPAI_TEST_SETTINGS") or "{}")
# Dict-valued options (RATE_LIMIT, ...) are merged one level deep.
MPAI = {
    **MPAI,
    **{
        key: {**MPAI[key], **value} if isinstance(MPAI.get(key), dict) else value
        for key, value in _overrides.items()
    },
}
