"""What every test folder shares: a config with fast defaults, an in-process Daemon built from it, a state file.

`base_config()` and `SECRETS` are plain values for the places a fixture cannot reach (module-level helpers,
tests/e2e/conftest.py, which writes the same document to a file for the daemon process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from amplitude_brevo.app import ComponentFactory, Daemon, no_components
from amplitude_brevo.config import Config, parse_config
from amplitude_brevo.notify import Notifier
from amplitude_brevo.state import StateStore

# The API keys of every test config, expanded from `${VAR}` (never from the real environment).
SECRETS = {
    "AMPLITUDE_API_KEY": "amp-key-E2E-0001",
    "AMPLITUDE_SECRET_KEY": "amp-secret-E2E-0002",
    "BREVO_API_KEY": "xkeysib-E2E-0003",
}

# Tables replaced whole by an override: merging a test's mapping into the default one would keep rows it left out.
_REPLACED = frozenset({"event_mapping", "property_mapping"})


def merge(document: dict[str, Any], overrides: Mapping[str, Any], *, top: bool = True) -> dict[str, Any]:
    """`document` with `overrides` merged in: a dict updates the section key by key (recursively), any other
    value replaces it, and so do `event_mapping` / `property_mapping`. `document` is not modified."""
    out = dict(document)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict) and not (top and key in _REPLACED):
            out[key] = merge(current, value, top=False)
        else:
            out[key] = value
    return out


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A config document for tests, with fast defaults: loopback URLs nobody answers on (a test that talks to a
    simulator points them at it), the state file in tmp_path, admin on a free port, ingest off, export rows
    mapped in this process (`export.readers: 0`), events only (`sync.user_properties` and `sync.revenue` off),
    small batches, a short shutdown_timeout, keys from SECRETS.

    Each override is merged into its section (see `merge`): `export={"lag": "0s"}` keeps `readers: 0`.
    """
    cfg: dict[str, Any] = {
        "connectors": {
            "amplitude": {
                "api_key": "${AMPLITUDE_API_KEY}",
                "secret_key": "${AMPLITUDE_SECRET_KEY}",
                "api_url": "http://127.0.0.1:9",
                "ingest_url": "http://127.0.0.1:9",
            },
            "brevo": {"api_key": "${BREVO_API_KEY}", "api_url": "http://127.0.0.1:9/v3"},
        },
        "event_mapping": {"Purchase": "order_completed", "Sign Up": "customer_created"},
        # Events only unless a test switches contacts (user_properties) or orders and totals (revenue) on.
        "sync": {"user_properties": False, "revenue": False},
        "export": {"readers": 0},
        "ingest": {"enabled": False, "listen": "127.0.0.1:0"},
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"path": str(tmp_path / "state.db")},
        "batching": {"max_items": 100, "max_wait": "50ms", "queue_capacity": 1000},
        "shutdown_timeout": "1s",
        "logging": {"level": "debug", "format": "json"},
    }
    return merge(cfg, overrides)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """`make_config(**overrides)`: base_config(tmp_path, **overrides), parsed with the SECRETS."""

    def make(**overrides: Any) -> Config:
        return parse_config(base_config(tmp_path, **overrides), env=SECRETS)

    return make


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """`config_file(**overrides)` writes base_config(tmp_path, **overrides) to tmp_path/config.yaml (again at
    each call, as an operator edits it before a reload) and returns its path. The SECRETS are set in the
    environment, where loading the file expands them from."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "config.yaml"

    def write(**overrides: Any) -> Path:
        path.write_text(yaml.safe_dump(base_config(tmp_path, **overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def make_daemon(make_config: Callable[..., Config]) -> Callable[..., Daemon]:
    """`make_daemon(**overrides)`: an in-process Daemon of make_config(**overrides) (or of `cfg`), signal
    handlers off, admin on a free port (`serve_admin=False`: none); `burst=True` stops it once every producer
    has finished. The test drives it: `serve()`, or `startup()` ... `shutdown()`."""

    def make(cfg: Config | None = None, *, components: ComponentFactory = no_components, burst: bool = False,
             config_path: str | Path | None = None, notifier: Notifier | None = None, serve_admin: bool = True,
             **overrides: Any) -> Daemon:
        if cfg is None:
            cfg = make_config(**overrides)
        elif overrides:
            raise TypeError(f"make_daemon: a cfg and config overrides {sorted(overrides)}; pass one or the other")
        return Daemon(cfg, config_path=config_path, notifier=notifier, components=components, burst=burst,
                      admin=serve_admin, install_signal_handlers=False)

    return make


class FakeClock:
    """A monotonic clock the test moves: a simulator's `clock`, advanced instead of sleeping for a window to pass."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def state(tmp_path: Path):
    """A StateStore on tmp_path/state.db (make_config's state.path), closed after the test."""
    store = await StateStore.open(tmp_path / "state.db")
    yield store
    await store.close()
