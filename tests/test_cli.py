"""The command line: help, parsing, `config show`/`schema`, errors and exit codes.

How this works: tests call `main([...])` in-process and read stdout/stderr with `capsys`;
`IMAP_PROXY_*` variables are removed from the environment first so the host cannot leak
into a result. `run` is exercised through `run_proxy` with a stand-in `serve` coroutine (the
real one opens sockets, which these tests must not). Two tests run `python -m imap_proxy` in
a subprocess to check the module entry point and real exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imap_proxy import __version__
from imap_proxy.cli import main, run_proxy
from imap_proxy.config import LogFormat, ProxyConfig, UpstreamSecurity
from imap_proxy.config_loader import load_config
from imap_proxy.observe.logging import reset_logging

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("IMAP_PROXY_"):
            monkeypatch.delenv(name)
    yield
    reset_logging()


def show(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["config", "show", *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    data = yaml.safe_load(captured.out)
    assert isinstance(data, dict)
    return data


# --- help and version ---------------------------------------------------------------------


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imap-proxy")
    assert "client-quirk-aware IMAP proxy" in out
    for command in ("imap-proxy run", "imap-proxy config show", "imap-proxy config schema"):
        assert command in out
    assert "IMAP_PROXY_UPSTREAM__ADDRESS" in out  # the environment layer is explained


def test_run_help_states_defaults_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Start the proxy" in out
    assert "listen          127.0.0.1:1143" in out
    assert "upstream        127.0.0.1:143, plain" in out
    assert "examples:" in out
    for flag in (
        "--config FILE",
        "--listen HOST:PORT",
        "--listen-tls HOST:PORT",
        "--tls-cert",
        "--tls-key",
        "--upstream HOST:PORT",
        "--upstream-security",
        "--upstream-ca",
        "--upstream-no-verify",
        "--rules DIR",
        "--metrics-listen",
        "--log-format",
        "--log-level",
        "--require-tls",
    ):
        assert flag in out, flag
    assert "rules check" not in out and "explain" not in out


def test_config_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--help"]) == 0
    out = capsys.readouterr().out
    assert "valid configuration file" in out
    assert "--upstream-security {plain,tls,starttls}" in out
    assert main(["config", "schema", "--help"]) == 0
    assert "JSON Schema" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"imap-proxy {__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: imap-proxy" in capsys.readouterr().err
    assert main(["config"]) == 2
    assert "usage: imap-proxy config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--upstream-security", "ssl"], "invalid choice: 'ssl'"),
        (["run", "--log-format", "xml"], "invalid choice: 'xml'"),
        (["run", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# --- config show ----------------------------------------------------------------------------


def test_config_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    data = show(capsys)
    assert data == ProxyConfig().model_dump(mode="json")
    assert data["listen"] == ["127.0.0.1:1143"]
    assert data["upstream"]["address"] == "127.0.0.1:143"


def test_every_flag_lands_in_its_setting(capsys: pytest.CaptureFixture[str]) -> None:
    data = show(
        capsys,
        "--listen", "0.0.0.0:143",
        "--listen", "[::]:143",
        "--listen-tls", "0.0.0.0:993",
        "--tls-cert", "/etc/proxy/cert.pem",
        "--tls-key", "/etc/proxy/key.pem",
        "--require-tls",
        "--upstream", "mail.example.net:993",
        "--upstream-security", "tls",
        "--upstream-ca", "/etc/ca.pem",
        "--upstream-no-verify",
        "--rules", "/srv/rules",
        "--metrics-listen", "0.0.0.0:9143",
        "--log-format", "json",
        "--log-level", "DEBUG",
    )  # fmt: skip
    assert data["listen"] == ["0.0.0.0:143", "[::]:143"]
    assert data["listen_tls"] == ["0.0.0.0:993"]
    assert data["tls"]["cert"] == "/etc/proxy/cert.pem"
    assert data["tls"]["key"] == "/etc/proxy/key.pem"
    assert data["require_tls"] is True
    assert data["upstream"] == {
        "address": "mail.example.net:993",
        "security": "tls",
        "verify": False,
        "ca_file": "/etc/ca.pem",
        "server_name": None,
        "connect_timeout": 10.0,
        "spare_connections": 0,
        "spare_max_age": 20.0,
    }
    assert data["rules"] == "/srv/rules"
    assert data["metrics_listen"] == "0.0.0.0:9143"
    assert data["log"]["format"] == "json"
    assert data["log"]["level"] == "debug"


def test_precedence_file_environment_flags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(
        "upstream:\n  address: from-file:143\n  security: starttls\n"
        "log:\n  format: json\n  level: warning\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("IMAP_PROXY_UPSTREAM__ADDRESS", "from-env:143")
    monkeypatch.setenv("IMAP_PROXY_LOG__LEVEL", "error")
    data = show(capsys, "--config", str(file), "--log-level", "debug")
    assert data["upstream"]["address"] == "from-env:143"  # env beats file
    assert data["upstream"]["security"] == "starttls"  # file beats defaults
    assert data["log"]["format"] == "json"
    assert data["log"]["level"] == "debug"  # flag beats env


def test_config_file_from_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "proxy.toml"
    file.write_text('[upstream]\naddress = "toml-host:1993"\n', encoding="utf-8")
    monkeypatch.setenv("IMAP_PROXY_CONFIG", str(file))
    assert show(capsys)["upstream"]["address"] == "toml-host:1993"


def test_config_show_output_is_a_valid_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        main(
            [
                "config",
                "show",
                "--upstream",
                "10.0.0.1:993",
                "--upstream-security",
                "tls",
                "--listen",
                "0.0.0.0:0",
                "--rules",
                "/srv/rules",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("# imap-proxy effective configuration")
    file = tmp_path / "shown.yaml"
    file.write_text(out, encoding="utf-8")
    reloaded = load_config(file, {}, {})
    assert reloaded.upstream.address == "10.0.0.1:993"
    assert reloaded.upstream.security is UpstreamSecurity.TLS
    assert reloaded.rules == Path("/srv/rules")
    assert (
        reloaded.model_dump()
        == load_config(
            None,
            {
                "upstream": {"address": "10.0.0.1:993", "security": "tls"},
                "listen": ["0.0.0.0:0"],
                "rules": "/srv/rules",
            },
            {},
        ).model_dump()
    )


def test_config_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "ProxyConfig"
    assert "upstream" in schema["properties"]


# --- configuration errors -------------------------------------------------------------------


def test_bad_file_value_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("upstream:\n  security: ssl\n", encoding="utf-8")
    assert main(["config", "show", "--config", str(file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"imap-proxy: {file}: upstream.security: "
        "Input should be 'plain', 'tls' or 'starttls' (got 'ssl')\n"
    )


def test_unknown_environment_variable_fails_run_before_serving(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAP_PROXY_UPSTREAM__ADRESS", "x:1")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imap-proxy: environment IMAP_PROXY_UPSTREAM__ADRESS: upstream.adress")
    assert "Traceback" not in err


def test_flag_value_error_and_missing_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["run", "--listen", "localhost"]) == 2
    assert "command line: listen.0: expected HOST:PORT" in capsys.readouterr().err
    missing = tmp_path / "nope.yaml"
    assert main(["run", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"imap-proxy: {missing}: no such file\n"


def test_listen_tls_without_certificate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--listen-tls", "0.0.0.0:993"]) == 2
    assert capsys.readouterr().err == (
        "imap-proxy: command line: listen_tls needs tls.cert and tls.key\n"
    )


# --- run ------------------------------------------------------------------------------------


def test_run_proxy_configures_logging_and_serves_the_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = load_config(None, {"log": {"format": "json"}, "upstream": {"address": "u:1"}}, {})
    served: list[ProxyConfig] = []

    async def serve(received: ProxyConfig) -> None:
        import trio

        await trio.sleep(0)
        served.append(received)

    assert run_proxy(config, serve) == 0
    assert served == [config]
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [starting] = [event for event in events if event["event"] == "starting"]
    assert starting["upstream"] == "u:1"
    assert starting["logger"] == "imap_proxy.cli"
    assert starting["level"] == "info"


async def _interrupted_directly(_config: ProxyConfig) -> None:
    raise KeyboardInterrupt


async def _interrupted_in_a_nursery(_config: ProxyConfig) -> None:
    # What trio does to the real server: Ctrl-C arrives in a task inside nested nurseries.
    import trio

    async def accept_loop() -> None:
        raise KeyboardInterrupt

    async with trio.open_nursery() as outer, trio.open_nursery() as inner:
        inner.start_soon(accept_loop)
        outer.start_soon(trio.sleep_forever)


@pytest.mark.parametrize("serve", [_interrupted_directly, _interrupted_in_a_nursery])
def test_run_proxy_exits_130_quietly_on_ctrl_c(
    capsys: pytest.CaptureFixture[str], serve: Callable[[ProxyConfig], Awaitable[None]]
) -> None:
    config = load_config(None, {"log": {"format": LogFormat.JSON, "level": "warning"}}, {})
    assert run_proxy(config, serve) == 130
    captured = capsys.readouterr()
    assert captured.err == ""  # the info "starting" event is below the level; no traceback
    assert captured.out == ""


def test_run_proxy_lets_real_errors_through() -> None:
    config = load_config(None, {"log": {"level": "error"}}, {})

    async def serve(_config: ProxyConfig) -> None:
        import trio

        async def fails() -> None:
            raise OSError("address in use")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails)

    with pytest.raises(BaseExceptionGroup) as caught:
        run_proxy(config, serve)
    assert caught.group_contains(OSError, match="address in use")


# --- python -m imap_proxy -------------------------------------------------------------------


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m imap_proxy ARGS` from the checkout, without any IMAP_PROXY_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMAP_PROXY_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "imap_proxy", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def test_module_entry_point_help() -> None:
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: imap-proxy")
    assert "config show" in result.stdout


def test_module_entry_point_config_show() -> None:
    result = run_module(
        "config", "show", "--upstream", "10.0.0.1:993", "--upstream-security", "tls"
    )
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert data["upstream"]["address"] == "10.0.0.1:993"
    assert data["upstream"]["security"] == "tls"
    assert data["listen"] == ["127.0.0.1:1143"]


def test_module_entry_point_config_error_exit_code() -> None:
    result = run_module("config", "show", "--upstream", "nope")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("imap-proxy: command line: upstream.address:")
    assert "Traceback" not in result.stderr
