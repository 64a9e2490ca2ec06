"""Outgoing HTTP: one aiohttp session factory whose TLS verifies certificates and requires TLS >= 1.2."""

from __future__ import annotations

import ssl

import aiohttp

from .. import __version__

USER_AGENT = f"amplitude-brevo/{__version__}"


def make_ssl_context() -> ssl.SSLContext:
    """Certificate and hostname verification on, TLS 1.0/1.1 refused."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def make_session(*, total_timeout: float = 120.0, connect_timeout: float = 10.0, limit: int = 20) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=make_ssl_context(), limit=limit)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=total_timeout, connect=connect_timeout, sock_read=60.0),
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )
