"""Request bodies in, bounded: size, JSON, nesting depth and text, before any model sees them.

Every edge reads a body the same way: at most ``max_bytes`` (413, checked against the
header and while reading), valid JSON (400), an object at the top, nested at most
:data:`MAX_JSON_DEPTH` deep, and every string (keys too) valid Unicode: JSON's ``\\ud800``
escapes decode to lone surrogates, which no tokenizer or UTF-8 writer accepts, so they are
refused here with a 400 naming the field instead of failing deep in the engine as a 500.
Lengths of lists and strings are the pydantic models' job (``openai_models``).

Parsing depth is bounded by the body size and Python's recursion limit (a body nested past
it is a 400, not a crash); the walk below then applies the real bound.
"""

from __future__ import annotations

import json
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from fleetserve.api.errors import validation_error
from fleetserve.errors import InvalidRequestError, PayloadTooLargeError

MAX_JSON_DEPTH = 32
ADMIN_MAX_BODY_BYTES = 64 * 1024

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused with 413 once it exceeds ``max_bytes`` (header or actual size)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLargeError(f"request body exceeds {max_bytes} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds {max_bytes} bytes")
    return bytes(body)


def parse_object(body: bytes) -> dict:
    """A JSON object with bounded depth and valid text (raises 400 naming the field)."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidRequestError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {_ascii(str(exc))}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    check_tree(data)
    return data


def check_tree(value: Any, path: str = "", depth: int = 0) -> None:
    """Depth at most :data:`MAX_JSON_DEPTH`; every string and key valid Unicode."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels", field=path or None)
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, path or None)
            check_tree(v, f"{path}.{k}" if path else k, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_tree(v, f"{path}.{i}" if path else str(i), depth + 1)


def check_text(s: str, field: Optional[str]) -> None:
    """Refuse text that is not valid Unicode (lone surrogates) with a 400 naming ``field``."""
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        where = _ascii(field) if field else "a key"
        raise InvalidRequestError(f"{where}: text is not valid Unicode (lone surrogate)",
                                  field=_ascii(field) if field else None) from None


def parse_model(model_cls: type[M], data: dict) -> M:
    """``data`` validated by ``model_cls``; a failure is a 400 naming the field."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


async def read_model(request: Request, model_cls: type[M], max_bytes: int = ADMIN_MAX_BODY_BYTES) -> M:
    """Body -> JSON object -> ``model_cls``, every bound above applied (the admin routes' reader)."""
    return parse_model(model_cls, parse_object(await read_body(request, max_bytes)))


def _ascii(s: str) -> str:
    """``s`` safe to put in a JSON response (a lone surrogate cannot be written as UTF-8)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8") if not s.isascii() else s
