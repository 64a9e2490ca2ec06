"""Outgoing HTTPS verifies certificates and refuses anything below TLS 1.2."""

import ssl

from amplitude_brevo.clients.http import make_ssl_context


def test_tls_context_is_strict():
    ctx = make_ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
