"""deploy/systemd/imap-proxy.service: the plain-host home.

How this works: the unit is parsed as systemd reads it (sections, repeated keys) and
checked for what the proxy's lifecycle needs: `Type=exec`, SIGTERM to stop (the drain)
with a stop timeout longer than the default drain deadline, `systemctl reload` = SIGHUP
to the main process, an unprivileged user and the hardening options. Where
`systemd-analyze` is installed, `systemd-analyze verify` checks the unit too, with
ExecStart pointed at an executable that exists here (verify insists on one).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from imap_proxy.config import TimeoutsConfig

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "imap-proxy.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        key, _, value = line.partition("=")
        sections[current][key.strip()].append(value.strip())
    return sections


UNIT_SECTIONS = parse_unit(UNIT.read_text())
SERVICE = UNIT_SECTIONS["Service"]


def one(key: str) -> str:
    [value] = SERVICE[key]
    return value


def test_lifecycle_settings() -> None:
    assert one("Type") == "exec"
    assert one("KillSignal") == "SIGTERM"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    stop_timeout = int(one("TimeoutStopSec"))
    assert stop_timeout > TimeoutsConfig().drain + 5  # the drain finishes before SIGKILL
    assert one("KillMode") == "mixed"  # SIGTERM to the main process only
    start = one("ExecStart").split()
    assert start[1:3] == ["run", "--config"]
    assert Path(start[0]).name == "imap-proxy"
    assert UNIT_SECTIONS["Install"]["WantedBy"] == ["multi-user.target"]


def test_unprivileged_and_hardened() -> None:
    assert one("User") == "imap-proxy"
    assert "DynamicUser" not in SERVICE  # the TLS key must stay readable across reloads
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one("AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert one(key) == value, key
    assert set(one("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in SERVICE["SystemCallFilter"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    start = one("ExecStart").split()[0]
    text = UNIT.read_text().replace(start, sys.executable)
    unit = tmp_path / "imap-proxy.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "imap-proxy.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_would_catch_a_typo(tmp_path: Path) -> None:
    text = UNIT.read_text().replace(one("ExecStart").split()[0], sys.executable)
    unit = tmp_path / "imap-proxy.service"
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The same criterion as above: a line naming the unit.
    assert re.search(
        r"imap-proxy\.service:\d+: Failed to parse protect system", result.stdout + result.stderr
    )
