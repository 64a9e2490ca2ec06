"""Reading a request body within a byte limit, gzip included, so neither a huge body nor a gzip bomb can make
the server hold more than the limit.

aiohttp inflates ``Content-Encoding: gzip`` bodies itself by default, chunk by chunk as they are read, so
reading the inflated stream up to the limit bounds the inflation too. If a server runs with aiohttp's
``auto_decompress=False`` the body arrives still compressed (it starts with the gzip magic bytes, which a JSON
or form body never does) and is inflated here, with the same bound.
"""

from __future__ import annotations

import zlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

GZIP_MAGIC = b"\x1f\x8b"
_GZIP = frozenset({"gzip", "x-gzip"})
_READ = 64 * 1024


class BodyTooLarge(Exception):
    """Over the limit, before or after inflating."""


class BadBody(Exception):
    """The body could not be read: a broken gzip stream, a connection cut mid-body."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, inflated, at most ``limit`` bytes; raises :class:`BodyTooLarge` or :class:`BadBody`."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    parts: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(_READ):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            parts.append(chunk)
    # RequestPayloadError: what aiohttp's own inflater raises on a body marked gzip that is not.
    except (HttpProcessingError, RequestPayloadError, ConnectionError, ValueError) as exc:
        raise BadBody(str(exc)) from exc
    body = b"".join(parts)
    if request.headers.get("Content-Encoding", "").strip().lower() in _GZIP and body.startswith(GZIP_MAGIC):
        body = gunzip(body, limit)
    return body


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate gzip ``data`` (one or more members) into at most ``limit`` bytes."""
    out = bytearray()
    try:
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(data, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise BodyTooLarge
            if not inflater.eof:
                raise BadBody("truncated gzip stream")
            data = inflater.unused_data
    except zlib.error as exc:
        raise BadBody(f"bad gzip stream: {exc}") from exc
    return bytes(out)
