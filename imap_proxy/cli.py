"""The `imap-proxy` command line: `run`, `config show`, `config schema`.

How this works: argparse parses the flags; every configuration flag defaults to None so that
only the flags actually given become overrides (`overrides_from_args` turns them into the
same nested shape as the config file). `load_config` layers them over the embedded defaults,
the file and the `IMAP_PROXY_…` environment. A bad configuration prints one line per problem
to stderr and exits 2 (argparse's own usage errors exit 2 too); `main` returns the exit code
instead of raising SystemExit, so tests call it in-process. `run` configures logging and hands
the configuration to `imap_proxy.net.server.serve` under `trio.run`; Ctrl-C exits quietly
with 130, a drained shutdown (SIGTERM) with 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from imap_proxy import __version__
from imap_proxy.config import LogFormat, ProxyConfig, UpstreamSecurity
from imap_proxy.config_loader import CONFIG_FILE_ENV, ConfigError, dump_json_schema, load_config
from imap_proxy.quirks.model import RuleLoadError

PROG = "imap-proxy"
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
LOG_LEVELS = ("debug", "info", "warning", "error")

ServeFunction = Callable[[ProxyConfig], Awaitable[None]]

_DEFAULTS = ProxyConfig()

_PRECEDENCE = textwrap.dedent(
    f"""\
    Where settings come from, lowest to highest precedence:
      1. embedded defaults (see `{PROG} config show` with no file),
      2. the configuration file, YAML (.yaml/.yml) or TOML (.toml), given by --config
         or ${CONFIG_FILE_ENV},
      3. environment variables IMAP_PROXY_<FIELD>, nested with "__", lists as JSON:
           IMAP_PROXY_UPSTREAM__ADDRESS=mail.example.net:993
           IMAP_PROXY_LOG__FORMAT=json
           IMAP_PROXY_LISTEN='["0.0.0.0:143"]'
      4. command-line flags (see `imap-proxy run --help`).
    An unknown key in the file or an unknown IMAP_PROXY_ variable is an error."""
)

_RUN_DESCRIPTION = textwrap.dedent(
    f"""\
    Start the proxy: accept IMAP clients on the listeners, connect each one to the upstream
    IMAP server, and apply the quirk rules that match the client. With no rule matching, the
    proxy forwards bytes unchanged. Logs go to stderr. SIGTERM drains the connections and
    exits 0; Ctrl-C exits at once.

    Defaults, with no file, environment or flags:
      listen          {", ".join(_DEFAULTS.listen)} (plain; also STARTTLS with --tls-cert/--tls-key)
      listen-tls      none (implicit TLS, needs --tls-cert/--tls-key)
      upstream        {_DEFAULTS.upstream.address}, {_DEFAULTS.upstream.security.value}
      rules           the rules packaged with imap-proxy
      metrics-listen  off
      log             {_DEFAULTS.log.format.value}, level {_DEFAULTS.log.level}, users hashed"""
)

_RUN_EXAMPLES = textwrap.dedent(
    f"""\
    examples:
      # a proxy on 127.0.0.1:1143 in front of a local server on port 143
      {PROG} run
      # listen on all addresses, upstream over implicit TLS, JSON logs and metrics
      {PROG} run --listen 0.0.0.0:143 --upstream mail.example.net:993 \\
          --upstream-security tls --log-format json --metrics-listen 0.0.0.0:9143
      # everything from a file, one flag overriding it
      {PROG} run --config /etc/imap-proxy/config.yaml --log-level debug
    """
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.dedent(
            """\
            A client-quirk-aware IMAP proxy. It sits in front of one IMAP server, recognises
            which mail client is connected, and rewrites commands and responses by declarative
            quirk rules (MOVE emulation, Trash folder mapping, stub FETCH for expunged
            messages). Everything no rule touches is forwarded byte for byte."""
        ),
        epilog=textwrap.dedent(
            f"""\
            commands:
              {PROG} run            start the proxy
              {PROG} config show    print the effective configuration as YAML
              {PROG} config schema  print the JSON Schema of the configuration file
              {PROG} replay TRACE   replay a recorded session, with and without rules

            Run `{PROG} COMMAND --help` for the flags of each command.
            """
        )
        + "\n"
        + _PRECEDENCE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    settings = _settings_flags()
    run = commands.add_parser(
        "run",
        parents=[settings],
        help="start the proxy",
        description=_RUN_DESCRIPTION,
        epilog=_RUN_EXAMPLES + "\n" + _PRECEDENCE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=_command_run)

    config = commands.add_parser(
        "config",
        help="show the effective configuration or its schema",
        description="Inspect the configuration without starting the proxy.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.set_defaults(handler=_command_config_help, config_parser=config)
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    show = config_commands.add_parser(
        "show",
        parents=[settings],
        help="print the effective configuration as YAML",
        description=textwrap.dedent(
            """\
            Print the configuration `run` would use with the same flags, file and
            environment, as YAML that is itself a valid configuration file. Nothing is
            started and nothing is connected to."""
        ),
        epilog=textwrap.dedent(
            f"""\
            examples:
              {PROG} config show
              {PROG} config show --config config.yaml --upstream 10.0.0.1:993 \\
                  --upstream-security tls
            """
        )
        + "\n"
        + _PRECEDENCE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.set_defaults(handler=_command_config_show)
    schema = config_commands.add_parser(
        "schema",
        help="print the JSON Schema of the configuration",
        description=(
            "Print the JSON Schema (draft 2020-12) of the configuration file, for editors "
            "and validation in CI."
        ),
    )
    schema.set_defaults(handler=_command_config_schema)

    from imap_proxy.rules_cli import add_rule_commands

    add_rule_commands(commands)
    from imap_proxy.replay_cli import add_replay_command

    add_replay_command(commands)
    return parser


def _settings_flags() -> argparse.ArgumentParser:
    """The flags shared by `run` and `config show`; each one overrides one setting."""
    flags = argparse.ArgumentParser(add_help=False)
    source = flags.add_argument_group("configuration source")
    source.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help=f"YAML or TOML configuration file (default: ${CONFIG_FILE_ENV}, else none)",
    )
    group = flags.add_argument_group("settings (each overrides the file and environment)")
    group.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="plain/STARTTLS listener, repeatable; port 0 picks a free port "
        f"(default: {', '.join(_DEFAULTS.listen)})",
    )
    group.add_argument(
        "--listen-tls",
        metavar="HOST:PORT",
        action="append",
        help="implicit-TLS listener, repeatable; needs --tls-cert and --tls-key (default: none)",
    )
    group.add_argument(
        "--tls-cert", metavar="FILE", type=Path, help="the proxy's certificate (PEM)"
    )
    group.add_argument("--tls-key", metavar="FILE", type=Path, help="its private key (PEM)")
    group.add_argument(
        "--require-tls",
        action="store_true",
        default=None,
        help="refuse LOGIN/AUTHENTICATE from clients not using TLS (default: allowed)",
    )
    group.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        help=f"the IMAP server behind the proxy (default: {_DEFAULTS.upstream.address})",
    )
    group.add_argument(
        "--upstream-security",
        choices=[member.value for member in UpstreamSecurity],
        help="how to reach it: plain TCP, implicit TLS, or STARTTLS "
        f"(default: {_DEFAULTS.upstream.security.value})",
    )
    group.add_argument(
        "--upstream-ca",
        metavar="FILE",
        type=Path,
        help="CA bundle to verify the upstream's certificate (default: the system store)",
    )
    group.add_argument(
        "--upstream-no-verify",
        action="store_true",
        default=None,
        help="do not verify the upstream's certificate (testing only)",
    )
    group.add_argument(
        "--rules", metavar="DIR", type=Path, help="quirk rules directory (default: packaged rules)"
    )
    group.add_argument(
        "--rules-watch",
        metavar="SECONDS",
        type=float,
        help="check the rules directory for changes this often and reload them "
        "(default: 0, only on SIGHUP)",
    )
    group.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz here (default: off)",
    )
    group.add_argument(
        "--log-format",
        choices=[member.value for member in LogFormat],
        help=f"log output on stderr (default: {_DEFAULTS.log.format.value})",
    )
    group.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help=f"lowest level logged (default: {_DEFAULTS.log.level})",
    )
    return flags


# Flag destination -> path in the configuration.
_FLAG_PATHS: dict[str, tuple[str, ...]] = {
    "listen": ("listen",),
    "listen_tls": ("listen_tls",),
    "tls_cert": ("tls", "cert"),
    "tls_key": ("tls", "key"),
    "require_tls": ("require_tls",),
    "upstream": ("upstream", "address"),
    "upstream_security": ("upstream", "security"),
    "upstream_ca": ("upstream", "ca_file"),
    "rules": ("rules",),
    "rules_watch": ("rules_watch",),
    "metrics_listen": ("metrics_listen",),
    "log_format": ("log", "format"),
    "log_level": ("log", "level"),
}


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that were given, nested like the configuration file."""
    overrides: dict[str, Any] = {}
    for dest, path in _FLAG_PATHS.items():
        value = getattr(args, dest, None)
        if value is not None:
            _set_path(overrides, path, value)
    if getattr(args, "upstream_no_verify", None):
        _set_path(overrides, ("upstream", "verify"), False)
    return overrides


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def _config_file(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    from_environment = os.environ.get(CONFIG_FILE_ENV)
    return Path(from_environment) if from_environment else None


def _load(args: argparse.Namespace) -> ProxyConfig:
    return load_config(_config_file(args), overrides_from_args(args))


def _command_run(args: argparse.Namespace) -> int:
    config = _load(args)
    return run_proxy(config)


def run_proxy(config: ProxyConfig, serve: ServeFunction | None = None) -> int:
    """Configure logging and serve until shut down; the exit code. `serve` is for tests."""
    import trio

    from imap_proxy.observe.logging import configure_logging, get_logger

    configure_logging(config.log.format, config.log.level)
    from imap_proxy.quirks.store import load_snapshot

    load_snapshot(config.rules)  # fail fast, with every problem listed, before listening
    if serve is None:
        from imap_proxy.net.server import serve as serve_proxy

        serve = serve_proxy
    log = get_logger("imap_proxy.cli")
    log.info(
        "starting",
        version=__version__,
        listen=config.listen,
        listen_tls=config.listen_tls,
        upstream=config.upstream.address,
        upstream_security=config.upstream.security.value,
        metrics_listen=config.metrics_listen,  # serve() runs /metrics, /healthz, /readyz there
    )
    try:
        trio.run(serve, config)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        # Ctrl-C raised inside nurseries arrives wrapped (strict exception groups).
        _interrupts, others = group.split(KeyboardInterrupt)
        if others is None:
            return EXIT_INTERRUPTED
        raise
    return EXIT_OK


def _command_config_show(args: argparse.Namespace) -> int:
    config = _load(args)
    sys.stdout.write(render_config_yaml(config))
    return EXIT_OK


def render_config_yaml(config: ProxyConfig) -> str:
    """The configuration as YAML that `--config` accepts back unchanged."""
    header = (
        "# imap-proxy effective configuration\n"
        "# (embedded defaults < --config file < IMAP_PROXY_* environment < flags)\n"
    )
    body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return header + body


def _command_config_schema(_args: argparse.Namespace) -> int:
    sys.stdout.write(dump_json_schema() + "\n")
    return EXIT_OK


def _command_config_help(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.config_parser
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `imap-proxy` and `python -m imap_proxy`; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, usage errors
        return _exit_code(exit_request.code)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        return handler(args)
    except (ConfigError, RuleLoadError) as error:
        from imap_proxy.rules_cli import one_line

        for problem in error.problems:
            print(f"{PROG}: {one_line(problem)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `imap-proxy rules docs | head`: the reader is gone, say nothing
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter exit flushes it
        return EXIT_OK


def _exit_code(code: str | int | None) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
