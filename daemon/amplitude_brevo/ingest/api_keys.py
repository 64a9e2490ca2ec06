"""The accepted Amplitude API keys: checked in constant time, shown only as a short fingerprint."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from amplitude_brevo.secrets import Secret


def fingerprint(key: str) -> str:
    """Eight hex digits of the key's SHA-256: enough to tell keys apart in a log, useless to call Amplitude."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class KeyRing:
    """`ingest.api_keys`, kept as digests.

    Comparing digests of equal length against every key, without stopping at the first match, leaks
    neither a key's length nor which key matched through the time an answer takes. No keys: nothing passes.
    """

    def __init__(self, keys: Iterable[Secret | str]) -> None:
        self._digests = [_digest(k.reveal() if isinstance(k, Secret) else k) for k in keys]

    def accepts(self, key: str) -> bool:
        probe = _digest(key)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(probe, known)
        return matched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
