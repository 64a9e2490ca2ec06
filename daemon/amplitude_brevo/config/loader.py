"""load_config()/parse_config(): YAML with duplicate-key checks, ${VAR} and *_file resolution, error reports."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .audiences import list_writer_errors
from .errors import ConfigError, Loc, format_path, scrub
from .fields import is_model, is_secret, unwrap
from .mapping import attribute_writer_errors
from .model import Config

# ---------------------------------------------------------------------------------------------------------
# Pre-pass over the raw YAML: ${VAR} expansion and *_file secrets, before the models see the data.


def _secret_paths(model: type[BaseModel], prefix: Loc = ()) -> set[Loc]:
    paths: set[Loc] = set()
    for name, info in model.model_fields.items():
        if is_secret(info.annotation):
            paths.add((*prefix, name))
        elif is_model(info.annotation):
            paths |= _secret_paths(unwrap(info.annotation), (*prefix, name))
    return paths


SECRET_PATHS = frozenset(_secret_paths(Config))

_VAR_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_BODY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


@dataclass
class _Resolver:
    env: Mapping[str, str]
    base_dir: Path
    errors: list[tuple[Loc, str]] = field(default_factory=list)
    # Locations whose value is already known to be wrong: model errors there would only repeat it.
    suppressed: list[Loc] = field(default_factory=list)
    # Where a key came from `<key>_file`: errors about the key are reported at the _file key.
    from_file: dict[Loc, Loc] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    order: dict[Loc, int] = field(default_factory=dict)
    # False: secrets are not needed (status, dlq list): an unset ${VAR} in a secret or its *_file path
    # leaves the secret empty, and *_file secrets are not read at all.
    read_secrets: bool = True

    def fail(self, loc: Loc, message: str, suppress: Loc | None = None) -> None:
        self.errors.append((loc, message))
        self.suppressed.append(loc if suppress is None else suppress)

    def resolve(self, node: Any, loc: Loc = ()) -> Any:
        self.order.setdefault(loc, len(self.order))
        if isinstance(node, str):
            value = self.expand(node, loc)
        elif isinstance(node, list):
            value = [self.resolve(item, (*loc, i)) for i, item in enumerate(node)]
        elif isinstance(node, dict):
            value = {key: self.resolve(item, (*loc, key)) for key, item in node.items()}
            self.read_files(value, loc)
        else:
            value = node
        if loc in SECRET_PATHS:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item:
                    self.secrets.add(item)
        return value

    def expand(self, text: str, loc: Loc) -> str:
        def substitute(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            body = _VAR_BODY_RE.match(m.group(1))
            if not body:
                # The body is not echoed: it could be a default that holds a secret.
                self.fail(loc, "malformed ${...} reference; use ${NAME} or ${NAME:-default}")
                return ""
            name, default = body.group(1), body.group(2)
            value = self.env.get(name)
            if value:
                return value
            if default is not None:  # like the shell: `:-` also covers a set-but-empty variable
                return default
            if value is None and not (not self.read_secrets and _is_secret_slot(loc)):
                self.fail(
                    loc, f"environment variable {name} is not set (use ${{{name}:-default}} if optional)"
                )
            return ""

        if "$" not in text:
            return text
        expanded = _VAR_RE.sub(substitute, text)
        if re.search(r"(?<!\$)\$\{[^}]*$", _VAR_RE.sub("", text)):
            self.fail(loc, "unterminated ${ reference")
        return expanded

    def read_files(self, mapping: dict[Any, Any], loc: Loc) -> None:
        for file_key in [k for k in mapping if isinstance(k, str) and k.endswith("_file")]:
            key = file_key[: -len("_file")]
            if (*loc, key) not in SECRET_PATHS:
                continue  # not a secret slot: the model reports it as an unknown key
            file_loc, key_loc = (*loc, file_key), (*loc, key)
            raw_path = mapping.pop(file_key)
            if raw_path in (None, ""):
                continue  # `api_key_file: ${KEY_FILE:-}`: file indirection not used
            if key in mapping:
                self.fail(file_loc, f"give either {key} or {file_key}, not both", suppress=key_loc)
                continue
            if not isinstance(raw_path, str):
                self.fail(file_loc, "must be a file path", suppress=key_loc)
                continue
            if not self.read_secrets:
                mapping[key] = [] if _is_list_slot(key_loc) else ""  # not read: left empty
                continue
            content = self.read_secret_file(raw_path, file_loc, key_loc)
            if content is None:
                continue
            self.from_file[key_loc] = file_loc
            if key_loc in SECRET_PATHS and _is_list_slot(key_loc):
                # A list of keys (ingest.api_keys): one per line, so keys can be rotated in the file.
                mapping[key] = [line.strip() for line in content.splitlines() if line.strip()]
            else:
                mapping[key] = content

    def read_secret_file(self, raw_path: str, file_loc: Loc, key_loc: Loc) -> str | None:
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            # systemd LoadCredential= puts credentials under $CREDENTIALS_DIRECTORY; look there first.
            credentials = self.env.get("CREDENTIALS_DIRECTORY")
            candidates = [Path(credentials) / path] if credentials else []
            candidates.append(self.base_dir / path)
            path = next((c for c in candidates if c.exists()), candidates[-1])
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.fail(file_loc, f"cannot read {path}: {exc.strerror or type(exc).__name__}", suppress=key_loc)
            return None
        try:
            content = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            self.fail(file_loc, f"{path} is not UTF-8 text", suppress=key_loc)
            return None
        if not content:
            self.fail(file_loc, f"{path} is empty", suppress=key_loc)
            return None
        self.secrets.add(content)
        self.secrets.update(line.strip() for line in content.splitlines() if line.strip())
        return content


def _is_secret_slot(loc: Loc) -> bool:
    """A secret (`api_key`), one item of a list of them (`api_keys[0]`), or a secret's `*_file` path."""
    if loc in SECRET_PATHS:
        return True
    if loc and isinstance(loc[-1], int) and loc[:-1] in SECRET_PATHS:
        return True
    return bool(loc) and isinstance(loc[-1], str) and loc[-1].endswith("_file") and (
        (*loc[:-1], loc[-1][: -len("_file")]) in SECRET_PATHS
    )


def _is_list_slot(loc: Loc) -> bool:
    model: Any = Config
    for name in loc:
        model = unwrap(model.model_fields[name].annotation)
    return get_origin(model) is list


# ---------------------------------------------------------------------------------------------------------
# Error formatting


def _model_at(loc: Loc) -> type[BaseModel] | None:
    tp: Any = Config
    for part in loc:
        tp = unwrap(tp)
        if is_model(tp):
            info = tp.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            tp = info.annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = unwrap(tp)
    return tp if is_model(tp) else None


def _unknown_key_message(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    names = list(model.model_fields)
    if key.endswith("_file") and key[: -len("_file")] in names:
        secret_names = [n for n, i in model.model_fields.items() if is_secret(i.annotation)]
        only = f" ({', '.join(secret_names)} here)" if secret_names else ""
        return f"unknown key: only secrets can be read from a *_file key{only}"
    choices = names + [f"{n}_file" for n, i in model.model_fields.items() if is_secret(i.annotation)]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return (
        f"unknown key; did you mean {close[0]!r}?"
        if close
        else f"unknown key; expected one of: {', '.join(names)}"
    )


def _pydantic_errors(exc: ValidationError) -> Iterator[tuple[Loc, str]]:
    # include_input=False: the input may be a credential. Messages below are built from types and our
    # own validators, never from str(exc).
    for err in exc.errors(include_input=False, include_url=False):
        loc: Loc = tuple(p for p in err["loc"] if p != "[key]")
        kind, msg = err["type"], err["msg"]
        if kind == "located":
            for sub, sub_msg in err["ctx"]["errors"]:
                yield (*loc, *sub), sub_msg
            continue
        if kind == "missing":
            msg = "is required"
        elif kind == "extra_forbidden":
            msg = _unknown_key_message(loc)
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "must be a mapping"
        elif kind == "list_type":
            msg = "must be a list"
        elif kind in ("string_type", "string_sub_type"):
            msg = "must be a string"
        elif kind == "bool_parsing" or kind == "bool_type":
            msg = "must be true or false"
        elif msg.startswith("Input should be"):
            msg = "must be" + msg[len("Input should be") :]
        yield loc, msg


def _order_key(loc: Loc, order: dict[Loc, int]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in order:
            return order[loc[:n]]
    return len(order)


# ---------------------------------------------------------------------------------------------------------
# Public API


def parse_config(
    data: dict[str, Any],
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    *,
    secrets: bool = True,
) -> Config:
    """Validate an already-parsed YAML document; raises ConfigError listing every problem.

    ``secrets=False`` is for commands that need no API key (status, dlq list/show/purge), run from a shell
    that has neither the key variables nor systemd's $CREDENTIALS_DIRECTORY: an unset ``${VAR}`` in a
    secret (or in a secret's ``*_file`` path) is not an error, ``*_file`` secrets are not read, and such
    secrets are left empty (None for optional ones, an empty Secret for the Brevo key). Everything else is
    validated as usual, including that every required secret key is written in the file at all.
    """
    env = os.environ if env is None else env
    if data is None:
        raise ConfigError(["config is empty: expected a mapping of sections (connectors, sync, ...)"])
    if not isinstance(data, dict):
        raise ConfigError([f"config must be a mapping of sections, not a {type(data).__name__}"])
    resolver = _Resolver(
        env=env, base_dir=Path(base_dir) if base_dir is not None else Path.cwd(), read_secrets=secrets
    )
    resolved = resolver.resolve(data)
    errors = list(resolver.errors) + list_writer_errors(resolved) + attribute_writer_errors(resolved)
    config: Config | None = None
    try:
        config = Config.model_validate(resolved, context={"secrets": secrets})
    except ValidationError as exc:
        for loc, msg in _pydantic_errors(exc):
            if any(loc[: len(s)] == s for s in resolver.suppressed):
                continue
            for key_loc, file_loc in resolver.from_file.items():
                if loc[: len(key_loc)] == key_loc:
                    loc = file_loc
            errors.append((loc, msg))
    if errors:
        errors.sort(key=lambda e: _order_key(e[0], resolver.order))
        lines: list[str] = []
        for loc, msg in errors:
            line = scrub(f"{format_path(loc)}: {msg}" if loc else msg, resolver.secrets)
            if line not in lines:
                lines.append(line)
        raise ConfigError(lines)
    assert config is not None
    return config


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # unhashable key: the model will reject it
            continue
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, secrets: bool = True
) -> Config:
    """Read, expand and validate a config file; raises ConfigError (also for I/O and YAML syntax errors).

    Every call reads the file and every ``*_file`` secret again (a SIGHUP reload picks up rotated keys).
    ``secrets=False``: see parse_config().
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Only the mark and the short problem text: str(exc) quotes the offending line, which may hold a key.
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(
            [f"{where}: invalid YAML: {exc.problem or exc.context or 'syntax error'}"]
        ) from None
    except yaml.YAMLError:
        raise ConfigError([f"{path}: invalid YAML"]) from None
    if data is None:
        raise ConfigError([f"{path}: config file is empty"])
    return parse_config(data, env=env, base_dir=path.parent, secrets=secrets)
