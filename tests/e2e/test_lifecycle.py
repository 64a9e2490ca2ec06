"""The daemon as systemd runs it: READY, SIGHUP reload (valid, then invalid), SIGTERM drain, exit 0."""

import signal
import time

from .conftest import SECRETS, DaemonProcess, base_config, write_config


async def test_reload_good_then_bad_then_sigterm(tmp_path, notify_socket, processes):
    cfg_path = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    daemon = await DaemonProcess.start(
        "run", "-c", str(cfg_path), env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "400000"}
    )
    processes.append(daemon)

    ready = await notify_socket.expect("READY=1")
    assert "STATUS=running" in ready
    await daemon.wait_for_log("daemon.started")
    await notify_socket.expect("WATCHDOG=1")

    # A valid change: the new mapping is swapped in.
    good = base_config(tmp_path, event_mapping={"Purchase": "purchase_done"})
    write_config(cfg_path, good)
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = await notify_socket.expect("RELOADING=1")
    assert any(f.startswith("MONOTONIC_USEC=") for f in reloading.split("\n"))
    await notify_socket.expect("READY=1")
    reloaded = await daemon.wait_for_log("config.reloaded")
    assert "event_mapping" in reloaded["changed"]

    # An invalid file: every error is logged, the daemon keeps running on the old config.
    bad = base_config(tmp_path, event_mapping={"Add to Cart": "cart updated"}, shutdown_timeout="soon")
    write_config(cfg_path, bad)
    daemon.proc.send_signal(signal.SIGHUP)
    await notify_socket.expect("RELOADING=1")
    await notify_socket.expect("READY=1")
    failed = await daemon.wait_for_log("config.reload_failed")
    joined = "\n".join(failed["errors"])
    assert 'event_mapping."Add to Cart"' in joined and "shutdown_timeout" in joined
    assert daemon.proc.returncode is None

    # SIGTERM: STOPPING=1, drain, exit 0 well within shutdown_timeout (5 s).
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    await notify_socket.expect("STOPPING=1")
    assert await daemon.wait(10) == 0
    assert time.monotonic() - started < 5
    assert daemon.events("daemon.stopped")
    output = daemon.all_output()
    for secret in SECRETS.values():
        assert secret not in output


async def test_bad_config_exits_2_without_printing_secrets(tmp_path, processes):
    cfg = base_config(tmp_path)
    cfg["connectors"]["brevo"]["api_url"] = "http://api.brevo.com/v3"
    cfg["bogus_key"] = 1
    cfg_path = write_config(tmp_path / "config.yaml", cfg)
    proc = await DaemonProcess.start("run", "-c", str(cfg_path))
    processes.append(proc)
    assert await proc.wait(20) == 2
    err = proc.stderr.decode()
    assert "connectors.brevo.api_url" in err and "bogus_key" in err
    for secret in SECRETS.values():
        assert secret not in proc.all_output()


async def test_unusable_state_file_fails_start_with_clear_error(tmp_path, processes):
    state = tmp_path / "state.db"
    state.write_bytes(b"this is not a database" * 100)
    cfg_path = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    proc = await DaemonProcess.start("run", "-c", str(cfg_path))
    processes.append(proc)
    assert await proc.wait(20) == 1
    line = await proc.wait_for_log("daemon.startup_failed")
    assert str(state) in line["error"]
    assert state.read_bytes() == b"this is not a database" * 100


async def test_one_writer_per_state_file(tmp_path, processes):
    """A second `run`, a `backfill` or a `dlq replay` on a running daemon's state file refuses, naming the
    holder's pid, and sends nothing; `status` and `dlq list` still read the file (without the API keys)."""
    import os
    import sys

    cfg_path = write_config(tmp_path / "config.yaml", base_config(tmp_path))
    daemon = await DaemonProcess.start("run", "-c", str(cfg_path))
    processes.append(daemon)
    await daemon.wait_for_log("daemon.started")
    pid = str(daemon.proc.pid)

    second = await DaemonProcess.start("run", "-c", str(cfg_path))
    processes.append(second)
    assert await second.wait(30) == 1
    failed = second.events("daemon.startup_failed")
    assert failed and pid in failed[0]["error"] and "in use" in failed[0]["error"], second.all_output()[-2000:]

    backfill = await DaemonProcess.start("backfill", "-c", str(cfg_path), "--start", "2026-11-01T00",
                                         "--end", "2026-11-01T00")
    processes.append(backfill)
    assert await backfill.wait(30) == 1
    assert pid in backfill.all_output()

    replay = await DaemonProcess.start("dlq", "replay", "--all", "-c", str(cfg_path))
    processes.append(replay)
    assert await replay.wait(30) == 1
    assert pid in replay.all_output()

    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    import asyncio

    for args in (("status",), ("dlq", "list")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amplitude_brevo", *args, "-c", str(cfg_path), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, (args, err.decode())
    assert daemon.proc.returncode is None, "the running daemon is untouched"
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.wait(15) == 0
