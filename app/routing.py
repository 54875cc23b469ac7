"""The route class every router uses: JSON bodies decoded strictly, every failure a 422 that says why.

JSON is UTF-8 (RFC 8259), whatever a ``charset`` parameter claims; a body that is not, one nested past
the decoder's depth, or one with a number of more than 4,300 digits is refused with the reason, as
ordinary malformed JSON is, instead of a bare 400.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def decode_json(body: bytes) -> Any:
    """The JSON value of ``body``; ``json.JSONDecodeError`` (which FastAPI answers 422) says what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise json.JSONDecodeError(f"the body is not UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start}); "
                                   "JSON is sent as UTF-8", "", 0) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as e:
        raise json.JSONDecodeError("the JSON is nested too deeply", "", 0) from e
    except ValueError as e:  # Python's guard against converting integers of thousands of digits
        raise json.JSONDecodeError(f"a number has more than {sys.get_int_max_str_digits()} digits", "", 0) from e


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = decode_json(await self.body())
        return self._json


class JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return route
