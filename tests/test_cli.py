"""The command line in-process: exit codes, check-config, status and dlq against a real state file."""

import asyncio
import os
import signal
import subprocess
import sys

import orjson
import pytest
import structlog
import yaml

from amplitude_brevo.cli import main
from amplitude_brevo.config import unbuilt_settings
from amplitude_brevo.logs import configure_logging
from amplitude_brevo.sandbox.amplitude_sim import AMPLITUDE_EXPORT_STATE
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE
from amplitude_brevo.sandbox.server import Sandbox, SandboxOptions
from amplitude_brevo.state import DeadLetter, StateStore

from .conftest import SECRETS, base_config
from .e2e.conftest import DaemonProcess


@pytest.fixture(autouse=True)
def _logging_left_as_found():
    """main() configures structlog for the whole process, onto the stream capsys lends this test and
    closes after it; later tests in the same session (test_app's daemons) would log into that closed file.
    Quiet meanwhile (warnings, to the real stderr), so that helpers' info lines stay out of stdout."""
    configure_logging("warning", "json", stream=sys.__stderr__)
    yield
    structlog.reset_defaults()


@pytest.fixture
def cfg_file(config_file):
    return config_file()


def test_check_config_prints_masked_config(cfg_file, capsys):
    assert main(["check-config", "-c", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "api_key: '***'" in out and "event_mapping:" in out
    assert all(secret not in out for secret in SECRETS.values())


def test_check_config_reports_errors_with_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("connectors: {brevo: {api_key: xkeysib-abc-LEAK}}\nbatchng: {}\n")
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "batchng" in err and "did you mean 'batching'" in err and "xkeysib-abc-LEAK" not in err


# Asks for segments, User Activity enrichment and cohort webhooks, none of which this version has.
UNBUILT = {"lists": {"active_users": 10}, "user_activity": {"enabled": True},
           "ingest": {"enabled": True, "webhook_token": "hook-token"}}


def test_check_config_warns_about_unbuilt_settings(config_file, capsys):
    path = config_file(**UNBUILT)
    assert main(["check-config", "-c", str(path)]) == 0  # still a valid config
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("amplitude-brevo: warning: ")]
    assert [w.split(": ", 2)[2].split(" ", 1)[0] for w in warnings] == ["lists", "user_activity.enabled",
                                                                        "ingest.webhook_token"]
    assert all("is accepted but not built yet in this version; it is ignored" in w for w in warnings)
    assert "warning" not in captured.out  # stdout stays the rendered YAML alone

    config_file(ingest={"enabled": False})  # the segments and enrichment asked for above are gone again
    assert main(["check-config", "-c", str(path)]) == 0
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------
# check-config --online, against both simulators on loopback (main() runs in a thread: it calls asyncio.run)


@pytest.fixture
async def sandbox():
    """Both simulators, accepting the SECRETS' keys."""
    options = SandboxOptions(
        amplitude_api_key=SECRETS["AMPLITUDE_API_KEY"], amplitude_secret_key=SECRETS["AMPLITUDE_SECRET_KEY"],
        brevo_api_key=SECRETS["BREVO_API_KEY"],
    )
    async with Sandbox(options) as sb:
        yield sb


def online_config(config_file, sb, **overrides):
    urls = {"amplitude": {"api_url": sb.amplitude_url, "ingest_url": sb.amplitude_url},
            "brevo": {"api_url": sb.brevo_url}}
    connectors = overrides.pop("connectors", {})
    for name, section in connectors.items():
        urls[name] = {**urls[name], **section}
    overrides.setdefault("property_mapping", {"email": "email", "first_name": "FIRSTNAME", "lifetime_revenue": "ltv"})
    return config_file(connectors=urls, **overrides)


async def check_online(path, capsys) -> tuple[int, list[str], str]:
    """Exit code, the lines after the rendered config, and stderr."""
    code = await asyncio.to_thread(main, ["check-config", "-c", str(path), "--online"])
    captured = capsys.readouterr()
    assert all(secret not in captured.out + captured.err for secret in SECRETS.values())
    rendered, _, checks = captured.out.partition("\nbrevo api key: ")
    yaml.safe_load(rendered)  # the config comes first, as without --online
    return code, ("brevo api key: " + checks).splitlines(), captured.err


def export_requests(sb) -> list[tuple[str, str, int]]:
    return [(r["start"], r["end"], r["status"]) for r in sb.amplitude_app[AMPLITUDE_EXPORT_STATE].requests]


async def test_check_config_online_good_keys(config_file, sandbox, capsys):
    path = online_config(config_file, sandbox, revenue={"count_attribute": "ORDER_COUNT"}, sync={"revenue": True})
    code, lines, _ = await check_online(path, capsys)
    assert lines == [
        "brevo api key: ok",
        "attribute FIRSTNAME: ok (text)",
        "attribute LTV: ok (float)",  # targets compare case-insensitively; email is identity, not checked
        "attribute ORDER_COUNT: ok (float)",
        "amplitude keys: ok",
    ]
    assert code == 0
    # The Export API was really asked, for an hour without data, and said so with its 404.
    assert export_requests(sandbox) == [("20000101T00", "20000101T00", 404)]


async def test_check_config_online_wrong_brevo_key(config_file, sandbox, capsys, monkeypatch):
    path = online_config(config_file, sandbox)
    monkeypatch.setenv("BREVO_API_KEY", "xkeysib-not-the-one")
    code, lines, _ = await check_online(path, capsys)
    assert code == 1
    assert lines == [
        "brevo api key: Brevo rejected connectors.brevo.api_key (HTTP 401 unauthorized: Key not found)",
        "amplitude keys: ok",
    ]
    assert "xkeysib-not-the-one" not in "\n".join(lines)


async def test_check_config_online_missing_attribute(config_file, sandbox, capsys):
    mapping = {"email": "email", "first_name": "FIRSTNAME", "plan_tier": "AMP_TIER"}
    path = online_config(config_file, sandbox, property_mapping=mapping, revenue={"ltv_attribute": "AMP_LTV"},
                         sync={"revenue": True})
    code, lines, _ = await check_online(path, capsys)
    assert code == 1
    assert lines[1:4] == [
        "attribute FIRSTNAME: ok (text)",
        "property_mapping.plan_tier -> AMP_TIER: missing in Brevo",
        "revenue.ltv_attribute -> AMP_LTV: missing in Brevo",
    ]

    # With create_attributes the daemon creates them at start: reported, not a failure, and not created here.
    path = online_config(config_file, sandbox, property_mapping=mapping, revenue={"ltv_attribute": "AMP_LTV"},
                         connectors={"brevo": {"create_attributes": True}})
    code, lines, _ = await check_online(path, capsys)
    assert code == 0
    assert lines[2] == ("property_mapping.plan_tier -> AMP_TIER: missing in Brevo "
                        "(created at start: connectors.brevo.create_attributes is true)")
    assert "AMP_TIER" not in sandbox.brevo_app[BREVO_STATE].attributes


async def test_check_config_online_wrong_amplitude_secret(config_file, sandbox, capsys, monkeypatch):
    path = online_config(config_file, sandbox)
    monkeypatch.setenv("AMPLITUDE_SECRET_KEY", "amp-secret-wrong")
    code, lines, _ = await check_online(path, capsys)
    assert code == 1
    assert lines[0] == "brevo api key: ok"
    assert lines[-1] == ("amplitude keys: Amplitude rejected connectors.amplitude.api_key / secret_key "
                         "(HTTP 401: Invalid API key or secret key)")
    assert "amp-secret-wrong" not in "\n".join(lines)


async def test_check_config_online_unreachable(config_file, capsys):
    path = config_file()  # base_config's URLs: loopback port 9, where nothing listens
    code, lines, _ = await check_online(path, capsys)
    assert code == 1
    assert lines[0].startswith("brevo api key: could not check (cannot reach connectors.brevo.api_url")
    assert lines[-1].startswith("amplitude keys: could not check (cannot reach connectors.amplitude.api_url")


async def test_check_config_without_online_asks_nobody(config_file, sandbox, capsys):
    path = online_config(config_file, sandbox)
    assert await asyncio.to_thread(main, ["check-config", "-c", str(path)]) == 0
    assert "brevo api key" not in capsys.readouterr().out
    assert export_requests(sandbox) == []
    assert sandbox.brevo_app[BREVO_STATE].rejected == 0


@pytest.mark.parametrize("command", [["run"], ["backfill", "--start", "2026-11-01T00", "--end", "2026-11-01T01"]])
async def test_run_and_backfill_log_unbuilt_settings_before_starting(config_file, make_config, command):
    path = config_file(**UNBUILT)
    expected = unbuilt_settings(make_config(**UNBUILT))
    proc = await DaemonProcess.start(command[0], "-c", str(path), *command[1:])
    try:
        await proc.wait_for_log("daemon.started")
        proc.proc.send_signal(signal.SIGTERM)
        await proc.wait()
    finally:
        proc.kill()
    first = proc.lines[: len(expected)]
    assert [(line["event"], line["level"]) for line in first] == [("config.not_built", "warning")] * len(expected)
    assert [line["detail"] for line in first] == expected and len(expected) == 3
    assert all(secret not in proc.all_output() for secret in SECRETS.values())


def test_config_path_defaults_to_environment(cfg_file, monkeypatch, capsys):
    monkeypatch.setenv("AMPLITUDE_BREVO_CONFIG", str(cfg_file))
    assert main(["check-config"]) == 0


def test_status_without_state_file(cfg_file, capsys):
    assert main(["status", "-c", str(cfg_file)]) == 1
    assert "no state file" in capsys.readouterr().err


def _seed_state(path):
    async def go():
        store = await StateStore.open(path)
        try:
            await store.set_checkpoint("export.next_hour", "20261101T06")
            await store.add_dead_letters([
                DeadLetter(source="export", sink="brevo_events", item={"event_name": "x"}, reason="refused: bad"),
                DeadLetter(source="export", sink="brevo_events", item={"line": 3}, reason="malformed JSON line"),
            ])
        finally:
            await store.close()

    asyncio.run(go())


def test_status_and_dlq_commands(cfg_file, tmp_path, capsys):
    _seed_state(tmp_path / "state.db")
    assert main(["status", "-c", str(cfg_file), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["checkpoints"] == {"export.next_hour": "20261101T06"}
    assert report["dead_letters"] == {"export": 2} and report["export_lag_seconds"] > 0

    assert main(["dlq", "list", "-c", str(cfg_file)]) == 0
    listing = capsys.readouterr().out
    assert "refused: bad" in listing and "malformed JSON line" in listing

    assert main(["dlq", "show", "1", "-c", str(cfg_file)]) == 0
    assert '"event_name": "x"' in capsys.readouterr().out
    assert main(["dlq", "show", "99", "-c", str(cfg_file)]) == 1

    assert main(["dlq", "purge", "--id", "2", "-c", str(cfg_file)]) == 0
    assert "purged 1" in capsys.readouterr().out
    assert main(["dlq", "list", "-c", str(cfg_file)]) == 0
    assert "malformed" not in capsys.readouterr().out


def test_backfill_rejects_reversed_range(cfg_file, capsys):
    assert main(["backfill", "-c", str(cfg_file), "--start", "2026-11-02T00", "--end", "2026-11-01T00"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["backfill", "-c", str(cfg_file), "--start", "yesterday", "--end", "2026-11-01T00"])
    assert exc.value.code == 2


def test_state_commands_need_no_api_keys(tmp_path):
    """An operator's shell has neither the key variables nor systemd's $CREDENTIALS_DIRECTORY."""
    data = base_config(tmp_path)
    del data["connectors"]["brevo"]["api_key"]
    data["connectors"]["brevo"]["api_key_file"] = "brevo_api_key"  # as README's production config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    _seed_state(tmp_path / "state.db")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and k != "CREDENTIALS_DIRECTORY"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "amplitude_brevo", *args, "-c", str(path)],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["dead_letters"] == {"export": 2}
    listing = cli("dlq", "list")
    assert listing.returncode == 0 and "refused: bad" in listing.stdout, listing.stderr
    assert cli("dlq", "show", "1").returncode == 0
    purge = cli("dlq", "purge", "--id", "2")
    assert purge.returncode == 0 and "purged 1" in purge.stdout, purge.stderr

    # Whatever sends still needs the keys, and says which are missing.
    for sends in (cli("dlq", "replay", "--all"), cli("check-config")):
        assert sends.returncode == 2
        assert "AMPLITUDE_API_KEY is not set" in sends.stderr and "connectors.brevo.api_key_file" in sends.stderr


NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z: 20 s into its minute
THIS_MINUTE = int(NOW // 60)


def _seed_usage(path):
    import sqlite3
    from contextlib import closing

    async def go():
        async with await StateStore.open(path) as store:
            await store.record_usage([
                ("brevo_contacts", THIS_MINUTE - 1, 312),        # the last whole minute
                ("brevo_contacts", THIS_MINUTE - 30, 8_808),     # earlier in the hour
                ("brevo_contacts", THIS_MINUTE - 61, 5_000),     # more than an hour ago: not counted
                ("brevo_contacts", THIS_MINUTE, 77),             # this minute, not over yet: not counted
                ("brevo_events_batch", THIS_MINUTE - 1, 3),
                ("brevo_events_batch", THIS_MINUTE - 59, 39),
            ])
            await store.record_backlogs({"brevo_orders": 120, "brevo_contacts": 40}, now=NOW - 8)
            await store.set_checkpoint("contacts.written", f"{9:020d}")

    asyncio.run(go())
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executemany("INSERT INTO contacts (user_id, seen, seq) VALUES (?, '2026-09-21', ?)",
                         [(f"u{seq}", seq) for seq in range(1, 13)])  # 10, 11, 12 are past the checkpoint


@pytest.fixture
def at_now(monkeypatch):
    from amplitude_brevo import cli

    monkeypatch.setattr(cli, "_wall_now", lambda: NOW)


def test_status_shows_budget_usage_against_allowances_and_backlogs(cfg_file, tmp_path, capsys, at_now):
    _seed_usage(tmp_path / "state.db")
    assert main(["status", "-c", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    budgets = out[out.index("Brevo budgets"):out.index("\nbacklogs")].splitlines()[1:]
    assert {line.split(None, 1)[0]: line.split(None, 1)[1] for line in budgets} == {
        "brevo_contacts": "312 / 600 last minute (52 %), 9,120 / 36,000 last hour (25 %)",
        "brevo_events_batch": "3 / 1.7 last minute (180 %), 42 / 100 last hour (42 %)",
        "brevo_events": "0 / 600 last minute (0 %), 0 / 36,000 last hour (0 %)",
        "brevo_orders": "0 / 300 last minute (0 %), 0 / 18,000 last hour (0 %)",
        "brevo_orders_batch": "0 / 1.7 last minute (0 %), 0 / 100 last hour (0 %)",
        "brevo_other": "0 / 1.7 last minute (0 %), 0 / 100 last hour (0 %)",
    }
    backlogs = [" ".join(line.split()) for line in out[out.index("\nbacklogs") + 1:].splitlines()[1:]]
    assert backlogs == ["contacts pending write 3", "brevo_contacts queued 40 (as of 8 s ago)",
                        "brevo_orders queued 120 (as of 8 s ago)"]
    assert out.index("dead letters") < out.index("Brevo budgets")  # the existing sections stay, first


def test_status_json_has_budgets_and_backlogs(cfg_file, tmp_path, capsys, at_now):
    _seed_usage(tmp_path / "state.db")
    assert main(["status", "-c", str(cfg_file), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["budgets"]["brevo_contacts"] == {
        "last_minute": 312, "last_hour": 9_120, "rate": {"requests": 10, "per": 1.0},
        "last_minute_allowance": 600.0, "last_hour_allowance": 36_000.0,
    }
    assert report["budgets"]["brevo_events_batch"]["last_hour"] == 42
    assert report["backlogs"] == {"contacts_pending": 3, "queues": {"brevo_orders": 120, "brevo_contacts": 40},
                                  "queues_at": "2026-09-21T14:13:12Z", "queues_age_seconds": 8.0}
    assert report["dead_letters"] == {}  # the existing fields stay


def test_status_of_a_state_file_without_usage_or_snapshot(cfg_file, tmp_path, capsys):
    _seed_state(tmp_path / "state.db")
    assert main(["status", "-c", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "0 / 600 last minute (0 %), 0 / 36,000 last hour (0 %)" in out
    assert "contacts pending write" in out and "no snapshot yet" in out
    assert "refused" not in out and "export" in out  # the dead-letter section is still there
