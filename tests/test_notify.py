"""sd_notify over a real unix datagram socket."""

import os
import socket

from amplitude_brevo.notify import Notifier


def _receiver(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock, path


def test_messages_reach_the_socket(tmp_path):
    sock, path = _receiver(tmp_path)
    with sock:
        n = Notifier({"NOTIFY_SOCKET": path})
        n.ready(status="running")
        n.reloading()
        n.watchdog()
        n.stopping()
        n.close()
        got = [sock.recv(4096).decode() for _ in range(4)]
    assert got[0] == "READY=1\nSTATUS=running"
    lines = got[1].split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    assert got[2] == "WATCHDOG=1"
    assert got[3] == "STOPPING=1"


def test_abstract_socket(tmp_path):
    name = f"amplitude-brevo-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    with sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.status("hello")
        n.close()
        assert sock.recv(100) == b"STATUS=hello"


def test_disabled_without_socket_and_never_raises(tmp_path):
    assert not Notifier({}).enabled
    assert Notifier({}).send("READY=1") is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert gone.send("READY=1") is False
    gone.close()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
