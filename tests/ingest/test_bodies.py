"""Inflating a gzip body within a limit (the path a server with aiohttp's auto_decompress off takes)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from amplitude_brevo.ingest.bodies import BadBody, BodyTooLarge, gunzip


def test_one_member_and_several() -> None:
    assert gunzip(gzip.compress(b'{"a": 1}'), 100) == b'{"a": 1}'
    assert gunzip(gzip.compress(b"abc") + gzip.compress(b"def"), 100) == b"abcdef"


def test_exactly_the_limit_passes_one_byte_more_does_not() -> None:
    assert gunzip(gzip.compress(b"x" * 1000), 1000) == b"x" * 1000
    with pytest.raises(BodyTooLarge):
        gunzip(gzip.compress(b"x" * 1001), 1000)
    with pytest.raises(BodyTooLarge):
        gunzip(gzip.compress(b"x" * 600) + gzip.compress(b"x" * 600), 1000)


def test_a_bomb_is_not_inflated_past_the_limit() -> None:
    squeeze = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(squeeze.compress(b"\0" * 2**20) for _ in range(200)) + squeeze.flush()
    with pytest.raises(BodyTooLarge):
        gunzip(bomb, 2**20)


@pytest.mark.parametrize("data", [gzip.compress(b"abc")[:-4], b"\x1f\x8bnot gzip at all"])
def test_broken_streams(data: bytes) -> None:
    with pytest.raises(BadBody):
        gunzip(data, 100)
