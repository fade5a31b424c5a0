"""Loading `ProxyConfig` from its four layers, with errors an operator can act on.

How this works: `load_config` builds, per call, a pydantic-settings class that has the fields
and validators of `ProxyConfig` and exactly three sources, highest precedence first:

    command-line flags (init kwargs) > `IMAP_PROXY_…` environment > config file (YAML/TOML)

and the embedded defaults of the models below them all. pydantic-settings deep-merges the
sources, so `--upstream HOST:PORT` replaces `upstream.address` and keeps the file's
`upstream.security`. Environment variables nest with `__` (`IMAP_PROXY_LOG__FORMAT=json`),
lists and mappings are JSON (`IMAP_PROXY_LISTEN='["0.0.0.0:143"]'`), `null` unsets an
optional field. Everything is `extra="forbid"`; the environment source passes unknown
`IMAP_PROXY_*` names through so that pydantic rejects them like an unknown file key.

Every failure becomes one `ConfigError`, whose lines each name where the bad value came
from (the file as given, the environment variable, or the command line) and the field path,
e.g. `config.yaml: upstream.security: Input should be 'plain', 'tls' or 'starttls' (got
'ssl')`. Callers print it and exit 2; nothing here prints or exits.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from imap_proxy.config import ProxyConfig

ENV_PREFIX = "IMAP_PROXY_"
ENV_NESTED_DELIMITER = "__"
# Read by the command line (the default of --config), not a setting of the model.
CONFIG_FILE_ENV = "IMAP_PROXY_CONFIG"
YAML_SUFFIXES = (".yaml", ".yml")
TOML_SUFFIXES = (".toml",)


class ConfigError(Exception):
    """The configuration cannot be loaded; `problems` holds one readable line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def load_config(
    file: Path | None,
    cli_overrides: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
) -> ProxyConfig:
    """Defaults < `file` < `environ` (`IMAP_PROXY_…`) < `cli_overrides` (nested like the file).

    Raises ConfigError.
    """
    if file is not None:
        _check_file(file)
    used: dict[str, PydanticBaseSettingsSource] = {}

    class _Layered(_LayeredProxyConfig):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            used["command line"] = init_settings
            used["environment"] = _EnvironmentSource(settings_cls, environ)
            if file is not None:
                used[str(file)] = _file_source(settings_cls, file)
            return tuple(used.values())

    try:
        layered = _Layered(**cli_overrides)
    except ValidationError as error:
        raise ConfigError(_explain(error, used, environ)) from None
    except SettingsError as error:  # pragma: no cover - our sources raise ConfigError first
        raise ConfigError([f"configuration: {error}"]) from None
    values = {name: getattr(layered, name) for name in ProxyConfig.model_fields}
    return ProxyConfig.model_construct(_fields_set=set(layered.model_fields_set), **values)


def flatten_env_name(path: tuple[str, ...]) -> str:
    """("upstream", "address") -> IMAP_PROXY_UPSTREAM__ADDRESS."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(part.upper() for part in path)


class _LayeredProxyConfig(BaseSettings, ProxyConfig):
    """ProxyConfig's fields and validators, read through pydantic-settings sources."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_parse_none_str="null",
        case_sensitive=False,
    )


# --- the file -------------------------------------------------------------------------------


def _check_file(file: Path) -> None:
    if file.suffix.lower() not in YAML_SUFFIXES + TOML_SUFFIXES:
        raise ConfigError(
            [f"{file}: unknown configuration format {file.suffix!r} (use .yaml, .yml or .toml)"]
        )
    if not file.exists():
        raise ConfigError([f"{file}: no such file"])
    if not file.is_file():
        raise ConfigError([f"{file}: not a regular file"])


def _file_source(settings_cls: type[BaseSettings], file: Path) -> PydanticBaseSettingsSource:
    if file.suffix.lower() in TOML_SUFFIXES:
        return _TomlFile(settings_cls, toml_file=file)
    return _YamlFile(settings_cls, yaml_file=file)


def _top_level_mapping(file: Path | Traversable, data: object) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{file}: expected a mapping of settings at the top level, got {type(data).__name__}"]
        )
    return data


class _YamlFile(YamlConfigSettingsSource):
    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            with file_path.open(encoding="utf-8") as stream:
                data = yaml.safe_load(stream)
        except yaml.MarkedYAMLError as error:
            where = ""
            if error.problem_mark is not None:
                mark = error.problem_mark
                where = f"line {mark.line + 1}, column {mark.column + 1}: "
            raise ConfigError(
                [f"{file_path}: {where}YAML syntax error: {error.problem or error}"]
            ) from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError([f"{file_path}: cannot read: {error}"]) from None
        return _top_level_mapping(file_path, data)


class _TomlFile(TomlConfigSettingsSource):
    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            with file_path.open("rb") as stream:
                data = tomllib.load(stream)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([f"{file_path}: TOML syntax error: {error}"]) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError([f"{file_path}: cannot read: {error}"]) from None
        return _top_level_mapping(file_path, data)


# --- the environment ------------------------------------------------------------------------


class _EnvironmentSource(EnvSettingsSource):
    """EnvSettingsSource over a given mapping, passing unknown IMAP_PROXY_* names through."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # What the base class does, over our mapping instead of os.environ.
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            name = _env_name_holding(self._environ, field_name, value)
            raise ConfigError(
                [
                    f"environment {name}: expected a JSON value such as "
                    f'\'["0.0.0.0:143"]\' or \'{{"key": "value"}}\', got {value!r}'
                ]
            ) from None

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        known = set(self.settings_cls.model_fields)
        for name, value in self._environ.items():
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX) or upper == CONFIG_FILE_ENV:
                continue
            first = upper[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER, 1)[0].lower()
            if first not in known:
                data[upper[len(ENV_PREFIX) :].lower()] = value
        return data


def _env_name_holding(environ: Mapping[str, str], field_name: str, value: Any) -> str:
    """The environment variable that most likely held `value` for `field_name`."""
    candidates = [
        name
        for name, text in environ.items()
        if name.upper().startswith(ENV_PREFIX) and text == value
    ]
    for name in candidates:
        if name.upper().endswith(field_name.upper()):
            return name.upper()
    return candidates[0].upper() if candidates else flatten_env_name((field_name,))


# --- explaining a ValidationError -----------------------------------------------------------


def _explain(
    error: ValidationError,
    sources: Mapping[str, PydanticBaseSettingsSource],
    environ: Mapping[str, str],
) -> list[str]:
    # Highest precedence first, as the sources were given to pydantic-settings.
    data = {label: _source_data(source) for label, source in sources.items()}
    contributing = [label for label, values in data.items() if values]
    problems = []
    for detail in error.errors():
        loc = tuple(detail["loc"])
        path = ".".join(str(part) for part in loc)
        where = _where(loc, data, environ) or " + ".join(reversed(contributing)) or "defaults"
        message = _message(detail, loc)
        if where.startswith("environment ") and detail["type"] == "extra_forbidden":
            message = _env_suggestion(loc) or message
        problems.append(f"{where}: {path}: {message}" if path else f"{where}: {message}")
    return problems


def _source_data(source: PydanticBaseSettingsSource) -> dict[str, Any]:
    try:
        return source()
    except (ConfigError, SettingsError):  # pragma: no cover - already failed earlier
        return {}


def _where(
    loc: tuple[int | str, ...], data: Mapping[str, dict[str, Any]], environ: Mapping[str, str]
) -> str | None:
    if not loc:
        return None
    for label, values in data.items():
        if not _holds(values, loc):
            continue
        if label == "environment":
            return f"environment {_env_name_for(loc, environ)}"
        return label
    return None


def _holds(values: object, loc: tuple[int | str, ...]) -> bool:
    node = values
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_mapping or in_list):
            return False
        node = node[part]  # type: ignore[index]
    return True


def _env_name_for(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str:
    names = {name.upper() for name in environ}
    keys = tuple(str(part) for part in loc if isinstance(part, str))
    for length in range(len(keys), 0, -1):
        candidate = flatten_env_name(keys[:length])
        if candidate in names:
            return candidate
    return flatten_env_name(keys)


def _message(detail: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    if detail["type"] == "extra_forbidden":
        return "unknown setting" + _suggestion(loc)
    message = detail["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = detail.get("input")
    if isinstance(value, str | int | float | bool) and detail["type"] != "value_error":
        text = repr(value)
        message += f" (got {text if len(text) <= 60 else text[:57] + '...'})"
    return message


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = ProxyConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _suggestion(loc: tuple[int | str, ...]) -> str:
    """`did you mean 'address'?` for a misspelt key, looked up in the model at `loc`."""
    model = _model_at(loc[:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _env_suggestion(loc: tuple[int | str, ...]) -> str | None:
    """IMAP_PROXY_UPSTREAM_ADDRESS -> `did you mean IMAP_PROXY_UPSTREAM__ADDRESS?`."""
    key = str(loc[-1])
    for index, char in enumerate(key):
        if char != "_":
            continue
        section, field = key[:index], key[index + 1 :]
        model = _model_at((*loc[:-1], section))
        if model is not None and model is not ProxyConfig and field in model.model_fields:
            name = flatten_env_name((*(str(part) for part in loc[:-1]), section, field))
            return f"unknown setting; did you mean {name}? (nested names use '__')"
    return None


def dump_json_schema() -> str:
    """The JSON Schema of ProxyConfig, as `imap-proxy config schema` prints it."""
    return json.dumps(ProxyConfig.model_json_schema(), indent=2)
