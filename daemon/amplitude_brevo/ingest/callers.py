"""Who is calling: `ingest.allow_from` (who may connect) and `ingest.trusted_proxies` (whose X-Forwarded-For
names the real caller)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class CallerPolicy:
    def __init__(self, allow_from: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> None:
        self._allow = [ipaddress.ip_network(n, strict=False) for n in allow_from]
        self._proxies = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def allowed(self, peer: str | None) -> bool:
        """May ``peer`` (the connection's address) connect? Empty ``allow_from``: anyone.

        The peer, never X-Forwarded-For: a header is the caller's word, the socket is not.
        An unknown peer (a Unix socket) is allowed only when no list is set.
        """
        if not self._allow:
            return True
        address = _address(peer)
        return address is not None and _within(address, self._allow)

    def caller(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address Amplitude should see: the peer, or — when the peer is a trusted proxy — the rightmost
        X-Forwarded-For entry that is not itself a trusted proxy (entries left of it are the client's word)."""
        address = _address(peer)
        if address is None:
            return peer or ""
        if not forwarded_for or not _within(address, self._proxies):
            return str(address)
        for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
            hop_address = _address(hop)
            if hop_address is None:
                break  # garbage in the chain: stop trusting it at that point
            address = hop_address
            if not _within(hop_address, self._proxies):
                break
        return str(address)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket is 10.0.0.1
    return address


def _within(address: Address, networks: list[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)
