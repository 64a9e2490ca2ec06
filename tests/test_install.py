"""README's "Install (production)" followed step by step under a temporary root, then checked as systemd would run it.

The steps, the config edits and the service's environment are read from README.md and the unit file, not
restated here, so the test fails when either drifts from what the daemon accepts: the shipped config.yaml
with exactly the README's edits must pass `check-config` with nothing in the environment but what the unit
gives the service (Environment=, $CREDENTIALS_DIRECTORY from LoadCredential=, $STATE_DIRECTORY).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_systemd_units import (
    _EXPOSURE,
    MAX_EXPOSURE,
    SERVICE,
    UNIT_DIR,
    complaints,
    one,
    run,
    service_values,
    systemd_analyze,
    verifiable_copy,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
KEY_VARIABLES = ("AMPLITUDE_API_KEY", "AMPLITUDE_SECRET_KEY", "BREVO_API_KEY", "WEBHOOK_TOKEN")


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_blocks(section: str, lang: str) -> list[str]:
    """The ```lang blocks of a README section, each dedented by its fence's indent (blocks in list items)."""
    found = re.findall(rf"(?ms)^( *)```{lang}\n(.*?)^\1```", section)
    return [re.sub(rf"(?m)^{indent}", "", body) for indent, body in found]


class Install:
    """A temporary root holding what README's install steps create."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys: dict[str, str] = {}  # credential file (absolute, as in README) -> its fake key

    def path(self, absolute: str) -> Path:
        assert absolute.startswith("/"), absolute
        return self.root / absolute.lstrip("/")

    def follow(self, script: str) -> Path:
        """Carry out the README's shell steps; returns where the config was installed."""
        config = None
        for line in script.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if "pip" in line or "venv" in line:
                continue  # the daemon is this checkout
            if words[:3] == ["sudo", "install", "-d"]:
                mode, target = words[4], words[5]
                self.path(target).mkdir(parents=True, exist_ok=True)
                self.path(target).chmod(int(mode, 8))
            elif words[:2] == ["sudo", "install"] and "config.yaml" in words:
                config = self.path(words[-1])
                shutil.copyfile(ROOT / "config.yaml", config)
            elif "tee" in words:
                target = words[words.index("tee") + 1]
                key = f"fake-{Path(target).name}-{len(self.keys)}-KEY"
                self.keys[target] = key
                self.path(target).write_text(key)
            elif words[:2] == ["sudo", "chmod"]:
                mode, pattern = words[2], words[3]
                for file in self.root.glob(pattern.lstrip("/")):
                    file.chmod(int(mode, 8))
            else:
                raise AssertionError(f"README install step not understood by this test: {line!r}")
        assert config is not None, "the README's steps install no config.yaml"
        return config

    def edit_config(self, config: Path, edits: str) -> None:
        """Apply a README yaml snippet of `<key>_file:` lines: each replaces `<key>` at the same place."""
        data = yaml.safe_load(config.read_text())

        def apply(target: dict[str, Any], snippet: dict[str, Any], where: str) -> None:
            for name, value in snippet.items():
                if isinstance(value, dict):
                    apply(target.setdefault(name, {}), value, f"{where}{name}.")
                    continue
                assert name.endswith("_file"), f"README edit {where}{name} is not a *_file key"
                target.pop(name.removesuffix("_file"), None)
                target[name] = str(self.path(value)) if value.startswith("/") else value

        apply(data, yaml.safe_load(edits), "")
        config.write_text(yaml.safe_dump(data, sort_keys=False))

    def service_env(self, unit: dict[str, list[str]], *, credentials: bool = True) -> dict[str, str]:
        """What systemd gives the service, with paths moved under the root; no key variables."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # where this checkout's package is imported from
        for line in unit.get("Environment", []):
            for assignment in shlex.split(line):
                name, _, value = assignment.partition("=")
                env[name] = str(self.path(value)) if value.startswith("/") else value
        if credentials:
            # LoadCredential=ID:PATH: systemd copies PATH to $CREDENTIALS_DIRECTORY/ID before start.
            creds = self.root / "run/credentials/amplitude-brevo.service"
            creds.mkdir(parents=True)
            for spec in unit["LoadCredential"]:
                name, _, source = spec.partition(":")
                shutil.copyfile(self.path(source), creds / name)
            env["CREDENTIALS_DIRECTORY"] = str(creds)
        state = self.path("/var/lib/" + one(unit, "StateDirectory"))
        state.mkdir(parents=True, exist_ok=True)
        env["STATE_DIRECTORY"] = str(state)
        assert not set(KEY_VARIABLES) & set(env)
        return env

    def check_config(self, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "amplitude_brevo", "check-config", "-c", str(config)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )

    def assert_clean(self, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        assert proc.returncode == 0, proc.stderr
        for key in self.keys.values():
            assert key not in proc.stdout + proc.stderr, "a key leaked into check-config's output"
        rendered = yaml.safe_load(proc.stdout)
        assert rendered["connectors"]["brevo"]["api_key"] == "***"
        assert rendered["connectors"]["amplitude"]["api_key"] == "***"
        assert rendered["connectors"]["amplitude"]["secret_key"] == "***"
        assert rendered["ingest"]["api_keys"] == ["***"]  # apps may send the project key, as before
        return rendered


@pytest.fixture
def install(tmp_path: Path) -> tuple[Install, Path, dict[str, list[str]]]:
    inst = Install(tmp_path / "root")
    section = readme_section("Install (production)")
    [steps] = code_blocks(section, "sh")[:1]
    config = inst.follow(steps)
    unit = service_values(UNIT_DIR / SERVICE)
    # The unit runs the config the README installs.
    exec_start = shlex.split(one(unit, "ExecStart"))
    assert inst.path(exec_start[exec_start.index("-c") + 1]) == config
    return inst, config, unit


def test_readme_production_install_passes_check_config(install) -> None:
    inst, config, unit = install
    section = readme_section("Install (production)")
    [edits] = code_blocks(section, "yaml")
    inst.edit_config(config, edits)
    # Every credential the unit loads is one the README writes.
    sources = {spec.partition(":")[2] for spec in unit["LoadCredential"]}
    assert sources == set(inst.keys)

    rendered = inst.assert_clean(inst.check_config(config, inst.service_env(unit)))
    # The state file lands in the unit's StateDirectory=, as the README says.
    assert Path(rendered["state"]["path"]).parent == Path("/var/lib", one(unit, "StateDirectory"))

    # The README's own check before starting: the operator's shell points $CREDENTIALS_DIRECTORY at the
    # originals instead of systemd's copies.
    [command] = re.findall(r"CREDENTIALS_DIRECTORY=(\S+)", section)
    env = inst.service_env(unit, credentials=False)
    env["CREDENTIALS_DIRECTORY"] = str(inst.path(command))
    inst.assert_clean(inst.check_config(config, env))


def test_readme_key_rotation_setup_reads_the_originals(install, tmp_path: Path) -> None:
    """The reload-rotates setup: absolute *_file paths, read by the service itself, no $CREDENTIALS_DIRECTORY."""
    inst, config, unit = install
    section = readme_section("Run under systemd")
    [edits] = [b for b in code_blocks(section, "yaml") if "api_key_file: /" in b]
    inst.edit_config(config, edits)
    inst.assert_clean(inst.check_config(config, inst.service_env(unit, credentials=False)))

    # The drop-in the README adds keeps the unit valid and its exposure within the limit.
    [drop_in] = re.findall(r"\[Service\]\s+(SupplementaryGroups=\S+)", section)
    analyze = systemd_analyze()
    copy = verifiable_copy(SERVICE, tmp_path)
    copy.write_text(copy.read_text() + f"\n[Service]\n{drop_in}\n")
    proc = run([analyze, "security", "--offline=true", "--no-pager", str(copy)], cwd=tmp_path)
    assert proc.returncode == 0 and not complaints(proc.stderr, (SERVICE,)), proc.stdout + proc.stderr
    [(_, exposure)] = _EXPOSURE.findall(proc.stdout)
    assert float(exposure) <= MAX_EXPOSURE


def test_unit_does_not_restart_on_a_bad_config() -> None:
    """`run` exits 2 on a bad config; restarting every RestartSec would only repeat the same errors."""
    for name in (SERVICE, "amplitude-brevo@.service"):
        assert one(service_values(UNIT_DIR / name), "RestartPreventExitStatus") == "2", name
