"""Logging: JSON lines with dotted names and UTC timestamps; secrets and emails never printed in clear."""

import io

import orjson
import structlog

from amplitude_brevo.logs import configure_logging, mask_email


class _Stream(io.StringIO):
    def isatty(self):
        return False


def _lines(stream):
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_iso_utc_timestamp():
    out = _Stream()
    configure_logging("info", "auto", stream=out)
    structlog.get_logger().info("brevo.batch.sent", sink="brevo_events", count=3)
    structlog.get_logger().debug("hidden.at.info")
    [line] = _lines(out)
    assert line["event"] == "brevo.batch.sent" and line["count"] == 3 and line["level"] == "info"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def test_secrets_and_secret_keys_are_redacted():
    out = _Stream()
    configure_logging("debug", "json", secrets=["xkeysib-abcdef123456"], stream=out)
    log = structlog.get_logger()
    log.error("http.failed", url="https://x/?k=xkeysib-abcdef123456", api_key="anything", nested={"token": "t0k3n", "ok": 1})
    log.info("x", error=RuntimeError("bad key xkeysib-abcdef123456"))
    text = out.getvalue()
    assert "xkeysib-abcdef123456" not in text and "anything" not in text and "t0k3n" not in text
    first, second = _lines(out)
    assert first["api_key"] == "***" and first["nested"] == {"token": "***", "ok": 1}
    assert "***" in second["error"]


def test_emails_are_masked():
    assert mask_email("user ana.lopez@example.org failed") == "user a***@example.org failed"
    out = _Stream()
    configure_logging("info", "json", stream=out)
    structlog.get_logger().warning("contact.rejected", contact="bob@example.com", items=["eve@example.net"])
    [line] = _lines(out)
    assert line["contact"] == "b***@example.com" and line["items"] == ["e***@example.net"]


def test_console_format_when_asked():
    out = _Stream()
    configure_logging("info", "console", stream=out)
    structlog.get_logger().info("daemon.started")
    assert "daemon.started" in out.getvalue() and not out.getvalue().startswith("{")
