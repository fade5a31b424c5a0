"""Configuration loading: defaults < file < environment < flags, and readable errors.

How this works: every test calls `load_config` with an explicit `environ` mapping (never the
process environment) and, where a file is needed, writes it under `tmp_path`. Error tests
check the text an operator would read: the source (file, variable or command line), the
field path and pydantic's message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imap_proxy.config import (
    LogFormat,
    ProxyConfig,
    UpstreamConfig,
    UpstreamSecurity,
    split_host_port,
)
from imap_proxy.config_loader import ConfigError, dump_json_schema, load_config

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(file: Path | None, overrides: dict[str, object], environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(file, overrides, environ)
    return str(caught.value)


# --- layering ---------------------------------------------------------------------------


def test_defaults_alone_equal_the_model_defaults() -> None:
    config = load_config(None, {}, NO_ENV)
    assert type(config) is ProxyConfig
    assert config == ProxyConfig()
    assert config.listen == ["127.0.0.1:1143"]
    assert config.upstream.address == "127.0.0.1:143"
    assert config.upstream.security is UpstreamSecurity.PLAIN


def test_yaml_file_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "config.yaml",
        "upstream:\n  address: mail.example.net:993\n  security: tls\n"
        "log:\n  format: json\ntimeouts:\n  preauth: 5\n",
    )
    config = load_config(file, {}, NO_ENV)
    assert config.upstream.address == "mail.example.net:993"
    assert config.upstream.security is UpstreamSecurity.TLS
    assert config.upstream.verify is True  # default kept inside a nested section
    assert config.log.format is LogFormat.JSON
    assert config.timeouts.preauth == 5.0
    assert config.listen == ["127.0.0.1:1143"]


def test_toml_file_is_read(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "proxy.toml",
        'listen = ["0.0.0.0:143", "[::1]:143"]\nrequire_tls = true\n\n'
        '[upstream]\naddress = "10.1.2.3:143"\nsecurity = "starttls"\n\n'
        '[tls]\ncert = "/etc/cert.pem"\nkey = "/etc/key.pem"\nmin_version = "1.3"\n',
    )
    config = load_config(file, {}, NO_ENV)
    assert config.listen == ["0.0.0.0:143", "[::1]:143"]
    assert config.require_tls is True
    assert config.upstream.security is UpstreamSecurity.STARTTLS
    assert config.tls.cert == Path("/etc/cert.pem")
    assert config.tls.min_version == "1.3"


def test_yaml_number_for_tls_version_is_accepted(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yml", "tls:\n  min_version: 1.3\n")
    assert load_config(file, {}, NO_ENV).tls.min_version == "1.3"


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    file = write(tmp_path, "empty.yaml", "# nothing set\n")
    assert load_config(file, {}, NO_ENV) == ProxyConfig()


def test_environment_overrides_file(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "upstream:\n  address: a.example:143\n  security: tls\n")
    environ = {
        "IMAP_PROXY_UPSTREAM__ADDRESS": "b.example:993",
        "IMAP_PROXY_LOG__FORMAT": "json",
        "IMAP_PROXY_LOG__LEVEL": "DEBUG",
        "IMAP_PROXY_LISTEN": '["0.0.0.0:143", "0.0.0.0:1143"]',
        "IMAP_PROXY_ID__FORWARD_ORIGINATING": "true",
        "UNRELATED": "ignored",
    }
    config = load_config(file, {}, environ)
    assert config.upstream.address == "b.example:993"
    assert config.upstream.security is UpstreamSecurity.TLS  # from the file, not replaced
    assert config.log.format is LogFormat.JSON
    assert config.log.level == "debug"
    assert config.listen == ["0.0.0.0:143", "0.0.0.0:1143"]
    assert config.id.forward_originating is True


def test_environment_null_unsets_an_optional_field(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "metrics_listen: 0.0.0.0:9143\n")
    assert load_config(file, {}, NO_ENV).metrics_listen == "0.0.0.0:9143"
    assert load_config(file, {}, {"IMAP_PROXY_METRICS_LISTEN": "null"}).metrics_listen is None


def test_flags_override_environment_and_file(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "upstream:\n  address: a.example:143\n  security: tls\n")
    environ = {"IMAP_PROXY_UPSTREAM__ADDRESS": "b.example:993", "IMAP_PROXY_LOG__LEVEL": "error"}
    overrides = {"upstream": {"address": "c.example:143"}, "listen": ["127.0.0.1:0"]}
    config = load_config(file, overrides, environ)
    assert config.upstream.address == "c.example:143"
    assert config.upstream.security is UpstreamSecurity.TLS
    assert config.log.level == "error"
    assert config.listen == ["127.0.0.1:0"]


def test_cross_field_rule_sees_the_merged_layers(tmp_path: Path) -> None:
    # listen_tls in the file is valid only because the certificate comes from the flags.
    file = write(tmp_path, "c.yaml", "listen_tls: ['0.0.0.0:993']\n")
    overrides = {"tls": {"cert": "/c.pem", "key": "/k.pem"}}
    config = load_config(file, overrides, NO_ENV)
    assert config.listen_tls == ["0.0.0.0:993"]
    assert config.tls.configured


def test_host_port_parsing() -> None:
    assert split_host_port("[::1]:993") == ("::1", 993)
    assert UpstreamConfig(address="mail.example:0").host_port == ("mail.example", 0)


# --- errors -----------------------------------------------------------------------------


def test_bad_enum_in_file_names_file_field_and_choices(tmp_path: Path) -> None:
    file = write(tmp_path, "config.yaml", "upstream:\n  security: ssl\n")
    text = problems_of(file, {}, NO_ENV)
    assert text == (
        f"{file}: upstream.security: Input should be 'plain', 'tls' or 'starttls' (got 'ssl')"
    )


def test_unknown_key_in_file_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    file = write(tmp_path, "config.yaml", "upstream:\n  adress: x:1\nfoo: 1\n")
    lines = problems_of(file, {}, NO_ENV).splitlines()
    assert f"{file}: upstream.adress: unknown setting; did you mean 'address'?" in lines
    assert f"{file}: foo: unknown setting" in lines


def test_unknown_environment_variable_is_an_error() -> None:
    text = problems_of(None, {}, {"IMAP_PROXY_UPSTREAM_ADDRESS": "x:1"})
    assert text == (
        "environment IMAP_PROXY_UPSTREAM_ADDRESS: upstream_address: unknown setting; "
        "did you mean IMAP_PROXY_UPSTREAM__ADDRESS? (nested names use '__')"
    )
    nested = problems_of(None, {}, {"IMAP_PROXY_LOG__COLOUR": "yes"})
    assert nested == "environment IMAP_PROXY_LOG__COLOUR: log.colour: unknown setting"


def test_config_file_variable_is_not_a_setting() -> None:
    assert load_config(None, {}, {"IMAP_PROXY_CONFIG": "/etc/x.yaml"}) == ProxyConfig()


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "upstream:\n  security: tls\n")
    text = problems_of(file, {}, {"IMAP_PROXY_UPSTREAM__SECURITY": "ssl"})
    assert text.startswith("environment IMAP_PROXY_UPSTREAM__SECURITY: upstream.security: ")


def test_environment_list_must_be_json() -> None:
    text = problems_of(None, {}, {"IMAP_PROXY_LISTEN": "0.0.0.0:143"})
    assert text.startswith("environment IMAP_PROXY_LISTEN: expected a JSON value")
    assert "'0.0.0.0:143'" in text


def test_bad_flag_value_is_attributed_to_the_command_line() -> None:
    text = problems_of(None, {"upstream": {"address": "no-port"}}, NO_ENV)
    assert text == (
        "command line: upstream.address: expected HOST:PORT or [IPV6]:PORT, got 'no-port'"
    )


def test_port_out_of_range_is_rejected() -> None:
    text = problems_of(None, {"listen": ["0.0.0.0:70000"]}, NO_ENV)
    assert text == "command line: listen.0: port out of range in '0.0.0.0:70000'"


def test_validator_messages_come_through(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "timeouts:\n  idle: 60\ntls:\n  cert: /c.pem\n")
    lines = problems_of(file, {}, NO_ENV).splitlines()
    assert f"{file}: timeouts.idle: timeouts.idle must be at least 1800 s (RFC 9051)" in lines
    assert f"{file}: tls: tls.cert and tls.key must be given together" in lines


def test_model_level_error_names_the_layers_involved(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "log:\n  format: json\n")
    text = problems_of(file, {"listen_tls": ["0.0.0.0:993"]}, NO_ENV)
    assert text == f"{file} + command line: listen_tls needs tls.cert and tls.key"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("c.yaml", "upstream: [\n", "YAML syntax error"),
        ("c.yaml", "- a\n- b\n", "expected a mapping of settings at the top level, got list"),
        ("c.toml", "upstream = \n", "TOML syntax error"),
        ("c.ini", "[x]\n", "unknown configuration format '.ini'"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: str, expected: str) -> None:
    file = write(tmp_path, name, content)
    text = problems_of(file, {}, NO_ENV)
    assert text.startswith(f"{file}: ")
    assert expected in text


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    file = write(tmp_path, "c.yaml", "log:\n  format: json\n   level: x: y\n")
    assert problems_of(file, {}, NO_ENV).startswith(f"{file}: line 3, column ")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "missing.yaml"
    assert problems_of(file, {}, NO_ENV) == f"{file}: no such file"


def test_json_schema_describes_the_model() -> None:
    import json

    schema = json.loads(dump_json_schema())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(ProxyConfig.model_fields)
    upstream = schema["$defs"]["UpstreamConfig"]["properties"]
    assert upstream["address"]["pattern"].startswith("^")
