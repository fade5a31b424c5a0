"""The Containerfile, checked without a container engine (none runs here).

How this works: the Containerfile is parsed just enough (instructions, continuation lines,
heredocs) to check what an image build would depend on: every path it COPYs from the
build context exists and is not excluded by .dockerignore, the configuration it writes
into the image is a valid `ProxyConfig` whose rules directory is the one it copies, and
the runtime stage runs as uid 10001 with an exec-form entrypoint, `STOPSIGNAL SIGTERM`.
Then the image's install is replayed: `pip wheel` builds the project wheel as the builder
stage does, a fresh virtualenv installs it (dependencies from this environment, so no
network is needed beyond the build backend), and the entrypoint command runs from there:
`imap-proxy --version`, and `imap-proxy config show` on the image's configuration.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from imap_proxy import __version__
from imap_proxy.config import ProxyConfig

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: str
    keyword: str
    arguments: str
    heredoc: str | None = None


def parse_containerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    stage = ""
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        heredoc = None
        marker = re.search(r"<<-?(\w+)", arguments)
        if marker:
            body: list[str] = []
            for body_line in lines:
                if body_line.strip() == marker.group(1):
                    break
                body.append(body_line)
            heredoc = "\n".join(body) + "\n"
        if keyword == "FROM":
            stage = arguments.split(" AS ")[-1].strip() if " AS " in arguments else arguments
        instructions.append(Instruction(stage, keyword, arguments.strip(), heredoc))
    return instructions


INSTRUCTIONS = parse_containerfile(CONTAINERFILE.read_text())


def in_stage(stage: str, keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == stage and i.keyword == keyword]


def copy_sources(instruction: Instruction) -> list[str]:
    words = [w for w in instruction.arguments.split() if not w.startswith("--")]
    return [w for w in words[:-1] if not w.startswith("<<")]


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, as far as this file uses them (last match wins, `!`)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, body) for p in prefixes):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def image_config() -> tuple[str, ProxyConfig]:
    [written] = [
        i
        for i in in_stage("runtime", "COPY")
        if i.heredoc and "/etc/imap-proxy/config.yaml" in i.arguments
    ]
    assert written.heredoc is not None
    return written.heredoc, ProxyConfig.model_validate(yaml.safe_load(written.heredoc))


# ------------------------------------------------------------------ the file itself


def test_two_stages_slim_runtime_wheels_only() -> None:
    froms = [i.arguments for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    [default] = [
        i.arguments for i in INSTRUCTIONS if i.keyword == "ARG" and "PYTHON_IMAGE" in i.arguments
    ]
    assert default == "PYTHON_IMAGE=python:3.11-slim"
    assert any("pip wheel" in i.arguments for i in in_stage("builder", "RUN"))
    [install] = [i.arguments for i in in_stage("runtime", "RUN") if "pip install" in i.arguments]
    assert "--no-index" in install and "from=builder" in install
    assert "--uid 10001" in install


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    patterns = dockerignore_patterns()
    copies = [i for i in INSTRUCTIONS if i.keyword == "COPY" and "--from=" not in i.arguments]
    sources = [source for i in copies for source in copy_sources(i)]
    assert "imap_proxy/rules/" in sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such path"
        assert not ignored(source.rstrip("/"), patterns), f"{source} is in .dockerignore"
    rules = sorted((ROOT / "imap_proxy" / "rules").glob("*.yaml"))
    assert rules, "the packaged rules directory has no rule files"
    assert ignored("tests", patterns) and ignored(".git", patterns) and ignored(".venv", patterns)


def test_the_image_configuration_is_valid_and_uses_the_copied_rules() -> None:
    _text, config = image_config()
    assert config.rules == Path("/etc/imap-proxy/rules")
    [rules_copy] = [i for i in in_stage("runtime", "COPY") if "imap_proxy/rules/" in i.arguments]
    assert rules_copy.arguments.split()[-1].rstrip("/") == str(config.rules)
    assert config.listen == ["0.0.0.0:1143"]
    assert config.metrics_listen == "0.0.0.0:9143"
    assert config.log.format.value == "json"
    [env] = in_stage("runtime", "ENV")
    assert "IMAP_PROXY_CONFIG=/etc/imap-proxy/config.yaml" in env.arguments
    assert "PYTHONDONTWRITEBYTECODE=1" in env.arguments  # read-only root file system


def test_runs_unprivileged_with_signals_reaching_the_proxy() -> None:
    runtime = {i.keyword: i.arguments for i in INSTRUCTIONS if i.stage == "runtime"}
    assert runtime["USER"] == "10001:10001"
    assert json.loads(runtime["ENTRYPOINT"]) == ["imap-proxy"]  # exec form: no shell as PID 1
    assert json.loads(runtime["CMD"]) == ["run"]
    assert runtime["STOPSIGNAL"] == "SIGTERM"
    assert runtime["WORKDIR"] == "/tmp"
    exposed = {int(port) for port in runtime["EXPOSE"].split()}
    assert exposed == {1143, 1993, 9143}


# ------------------------------------------------------- the install, replayed


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project installed from its wheel, as in the image."""
    base = tmp_path_factory.mktemp("image")
    wheels = base / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    [wheel] = list(wheels.glob("imap_proxy-*.whl"))
    environment = base / "venv"
    # Dependencies come from this interpreter's site-packages (no network needed for them);
    # the project itself only from the wheel.
    venv.create(environment, system_site_packages=True, with_pip=True)
    subprocess.run(
        [
            str(environment / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return environment


def run_entrypoint(
    environment: Path, *args: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("IMAP_PROXY_")}
    clean.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(environment / "bin" / "imap-proxy"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, "PYTHONDONTWRITEBYTECODE": "1", **env},
    )


def test_entrypoint_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import imap_proxy; print(imap_proxy.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed)  # the wheel, not the checkout
    version = run_entrypoint(installed, "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"imap-proxy {__version__}"


def test_config_show_reads_the_image_configuration(installed: Path, tmp_path: Path) -> None:
    text, expected = image_config()
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    shown = run_entrypoint(
        installed, "config", "show", cwd=tmp_path, IMAP_PROXY_CONFIG=str(config_file)
    )
    assert shown.returncode == 0, shown.stderr
    assert ProxyConfig.model_validate(yaml.safe_load(shown.stdout)) == expected


def test_the_wheel_carries_the_rules_the_image_copies(installed: Path, tmp_path: Path) -> None:
    listing = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import importlib.resources as r; "
            "print('\\n'.join(sorted(p.name for p in (r.files('imap_proxy') / 'rules').iterdir())))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    packaged = {name for name in listing.stdout.split() if name.endswith(".yaml")}
    in_checkout = {path.name for path in (ROOT / "imap_proxy" / "rules").glob("*.yaml")}
    assert packaged == in_checkout
    assert packaged
