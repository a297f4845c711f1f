"""A DRF JSON parser with the websocket's limits on size and nesting (README, "REST").

DRF's own ``JSONParser`` reads ``request.body`` whole (so a body over Django's
``DATA_UPLOAD_MAX_MEMORY_SIZE`` is an HTML 400) and lets ``RecursionError`` out of a
body nested about 1,000 deep (a 500). :class:`BoundedJSONParser` reads at most
``MPAI["MAX_FRAME_BYTES"]`` + 1 bytes from the stream and parses them with
:func:`mpai.jsonlimits.loads_bounded`; every refusal is a JSON error in mpai's shape,
``{"code": "invalid_json", "detail": "..."}``: 413 for a body that is too large, 400
otherwise (README, "REST: POST /api/mpai/v1/chat/").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework import exceptions, renderers, status
from rest_framework.parsers import BaseParser

from mpai.conf import mpai_settings
from mpai.exceptions import InvalidJson
from mpai.jsonlimits import JsonTooLarge, loads_bounded


class InvalidJsonBody(exceptions.ParseError):
    """A 400 whose body is ``{"code": "invalid_json", "detail"}``."""

    def __init__(self, error: InvalidJson) -> None:
        super().__init__({"code": error.code, "detail": error.detail}, code=error.code)


class RequestBodyTooLarge(InvalidJsonBody):
    """The same body with 413: the request body is larger than ``MAX_FRAME_BYTES``."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class BoundedJSONParser(BaseParser):
    """Parse ``application/json`` bodies within ``MAX_FRAME_BYTES`` and ``MAX_JSON_DEPTH``.

    Not a subclass of DRF's ``JSONParser``: DRF hands that class ``request.body``, which
    Django refuses past ``DATA_UPLOAD_MAX_MEMORY_SIZE`` with an HTML page.
    """

    media_type = "application/json"
    renderer_class = renderers.JSONRenderer

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        max_bytes = mpai_settings.MAX_FRAME_BYTES
        request = (parser_context or {}).get("request")
        meta = getattr(request, "META", {})
        try:
            declared = int(meta.get("CONTENT_LENGTH") or 0)
        except (TypeError, ValueError):
            declared = 0
        try:
            if declared > max_bytes:  # refused unread
                raise JsonTooLarge(f"The request body is larger than {max_bytes} bytes.")
            return loads_bounded(
                stream.read(max_bytes + 1),
                max_bytes=max_bytes,
                max_depth=mpai_settings.MAX_JSON_DEPTH,
                what="request body",
            )
        except JsonTooLarge as exc:
            raise RequestBodyTooLarge(exc) from None
        except InvalidJson as exc:
            raise InvalidJsonBody(exc) from None
