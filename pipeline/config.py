"""The one configuration system of hmhi-uvos.

Configs are typed dataclasses with a docstring (a string literal) after each field, validated in
``__post_init__`` with :func:`require`. They are loaded from YAML, then updated by ``key.sub=value`` overrides:

    cfg = load_config(TrainJobConfig, "configs/tiny_cpu.yaml", overrides=["optim.lr=1e-4"])

A job's ``main(argv=None)`` gets ``--config FILE``, repeatable ``--set key=value``, ``--print-config`` and its own
shortcut flags from :func:`parse_job_args`. Unknown keys are errors, values are coerced to the field types, and every
error names the dotted field path and the bad value.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, Union, runtime_checkable

import yaml

from pipeline.errors import UserError
from pipeline.storage import open_url

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # typeshed's "any dataclass"; exists only for type checkers

__all__ = [
    "ConfigError",
    "FieldError",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "field_docs",
    "FlagTarget",
    "load_config",
    "parse_job_args",
    "require",
]

C = TypeVar("C", bound="DataclassInstance")
"""A config class: a dataclass."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the dotted field path and the value."""

    def __init__(self, field: str, value: Any, message: str):
        self.field, self.value, self.reason = field, value, message
        super().__init__(f"config field '{field}' = {value!r}: {message}")

    def __reduce__(self):
        # Rebuilt from its fields, not its message: a ConfigError raised in a Ray worker reaches the driver whole.
        return (type(self), (self.field, self.value, self.reason))

    def under(self, prefix: str) -> ConfigError:
        """The same error with the field path prefixed by ``prefix`` (for nested configs)."""
        return ConfigError(f"{prefix}.{self.field}" if prefix else self.field, self.value, self.reason)


@runtime_checkable
class FieldError(Protocol):
    """An error naming the field it is about: :class:`ConfigError`, and ``model.SettingError``, which model/
    raises (it stands alone, so it cannot subclass ConfigError). ``config_from_dict`` turns one raised by a nested
    dataclass into a ConfigError naming the dotted path."""

    field: str
    value: Any
    reason: str


def require(condition: bool, field: str, value: Any, message: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``condition`` holds (use in ``__post_init__``)."""
    if not condition:
        raise ConfigError(field, value, message)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written after each field of the dataclass ``cls`` (and of its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


# -- coercion ------------------------------------------------------------------------------------------------------

_NULL_WORDS = ("null", "~")


def _parse_scalar(text: str) -> Any:
    """A command-line value as YAML would read it (``1``, ``true``, ``[1, 2]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce_union(args: tuple, value: Any, path: str) -> Any:
    non_none = [a for a in args if a is not type(None)]
    if value is None or (isinstance(value, str) and value.strip() in _NULL_WORDS and type(None) in args):
        if type(None) in args:
            return None
        raise ConfigError(path, value, "must not be null")
    errors = []
    for option in non_none:
        try:
            return _coerce(option, value, path)
        except ConfigError as e:
            errors.append(e.reason)
    raise ConfigError(path, value, " / ".join(errors))


def _coerce_literal(args: tuple, value: Any, path: str) -> Any:
    for choice in args:
        try:
            candidate = _coerce(type(choice), value, path)
        except ConfigError:
            continue
        if candidate == choice:
            return choice
    raise ConfigError(path, value, f"must be one of {list(args)}")


def _coerce_dataclass(tp: Any, value: Any, path: str) -> Any:
    if isinstance(value, tp):
        return value
    if isinstance(value, str):
        value = _parse_scalar(value)
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, f"must be a mapping of {tp.__name__} fields")
    return config_from_dict(tp, value, _path=path)


_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


def _coerce_scalar(tp: type, value: Any, path: str) -> Any:
    """bool, int, float and str, with the conversions a command line needs ("1e-4", "true", "1_000")."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise ConfigError(path, value, "must be a boolean (true/false)")
    if isinstance(value, bool):
        raise ConfigError(
            path, value, f"must be {'an integer' if tp is int else 'a number' if tp is float else 'a string'}"
        )
    if tp is int:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(path, value, "must be an integer")
    if tp is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(path, value, "must be a number")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    raise ConfigError(path, value, "must be a string")


def _coerce_sequence(tp: Any, origin: Any, args: tuple, value: Any, path: str) -> Any:
    if isinstance(value, str):
        parsed = _parse_scalar(value)
        value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(path, value, "must be a list")
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise ConfigError(path, value, f"must have exactly {len(args)} items")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item_type = args[0] if args else Any
    items = [_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if (origin is tuple or tp is tuple) else items


def _coerce_mapping(args: tuple, value: Any, path: str) -> Any:
    if isinstance(value, str):
        value = _parse_scalar(value)
    if not isinstance(value, Mapping):
        raise ConfigError(path, value, "must be a mapping")
    key_type, value_type = args if args else (Any, Any)
    return {_coerce(key_type, k, path): _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """``value`` converted to the type ``tp``, or a ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(args, value, path)
    if origin is Literal:
        return _coerce_literal(args, value, path)
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(tp, value, path)
    if tp in (bool, int, float, str):
        return _coerce_scalar(tp, value, path)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return _coerce_sequence(tp, origin, args, value, path)
    if origin in (dict, Mapping) or tp is dict:
        return _coerce_mapping(args, value, path)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(path, value, f"cannot be converted to {getattr(tp, '__name__', tp)}")


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None, _path: str = "") -> C:
    """Build the dataclass ``cls`` from a nested mapping; unknown keys and bad values raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"{_path}.{key}" if _path else str(key), data[key], f"unknown config key{hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{_path}.{name}" if _path else name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(_path) from None
    except ValueError as e:
        if not isinstance(e, FieldError):
            raise
        raise ConfigError(e.field, e.value, e.reason).under(_path) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), suitable for YAML/JSON and for Ray's ``train_loop_config``."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def config_to_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise ConfigError(dotted, value, "an override needs the form key.sub=value")
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {} if child is None or not dataclasses.is_dataclass(child) else config_to_dict(child)
            node[k] = child
        node = child
    node[keys[-1]] = value


def _read_yaml(path: str) -> dict[str, Any]:
    if "://" in str(path):
        storage, leaf = open_url(str(path))
        text = storage.read_text(leaf)
    else:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError("--config", str(path), "file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("--config", str(path), f"not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", str(path), "the top level of a config file must be a mapping")
    return data


Override = str | tuple[str, Any]
"""A config override: ``"key.sub=value"`` (the value parsed as the field's type, as on the command line) or
``(dotted_key, value)`` with the value as it is."""


def load_config(cls: type[C], path: str | None = None, overrides: Sequence[Override] = ()) -> C:
    """``cls`` from the YAML file ``path`` (optional), then the overrides applied in order.

    The one way a config is built from a file and overrides: :func:`parse_job_args` comes here too.
    """
    data: dict[str, Any] = _read_yaml(path) if path else {}
    for item in overrides:
        if isinstance(item, tuple):
            key, value = item
        else:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise ConfigError(str(item), None, "an override needs the form key.sub=value")
            try:
                _field_at(cls, key)  # a typed field converts its text itself (with errors naming it)
            except KeyError:  # in a free-form mapping (model.options.decoder_width=32): read as YAML would
                value = _parse_scalar(value)
        _set_dotted(data, key, value)
    return config_from_dict(cls, data)


FlagTarget = str | tuple[str, Any]


def _field_at(cls: type, dotted: str) -> tuple[Any, str]:
    """(type, docstring) of the field at ``dotted`` in ``cls``."""
    tp: Any = cls
    doc = ""
    for part in dotted.split("."):
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            raise KeyError(dotted)
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise KeyError(dotted)
        doc = field_docs(tp).get(part, "")
        tp = hints[part]
    return tp, doc


def _flag_help(doc: str, dotted: str) -> str:
    """A flag's help: its field's whole docstring (argparse re-wraps it to the terminal), then the field's path."""
    text = " ".join(doc.replace("``", "").split())  # docstrings' literal markup means nothing in a terminal
    return f"{text} [{dotted}]".replace("%", "%%")  # argparse %-formats help strings


def parse_job_args(
    cls: type[C],
    argv: Sequence[str] | None,
    description: str = "",
    flags: Mapping[str, FlagTarget] | None = None,
    prog: str | None = None,
    epilog: str | None = None,
) -> C:
    """Parse a job's command line into the config ``cls``.

    ``flags`` maps shortcut flags to dotted field paths (``{"--input": "input"}``), or to ``(path, constant)`` for
    switches (``{"--use-gpu": ("scaling.use_gpu", True)}``). Precedence: the ``--config`` YAML, then the shortcut
    flags, then ``--set`` overrides in order. ``--print-config`` prints the resolved YAML and exits. ``--help``
    shows ``description``, every flag with its field's whole docstring, and ``epilog`` (both kept as written).
    """
    flags = dict(flags or {})
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a typo or a cut flag must not silently be another (--videos is not --videos-in-flight)
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (local path or URL)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    dests: dict[str, str] = {}
    for flag, target in flags.items():
        dotted, const = target if isinstance(target, tuple) else (target, None)
        _, doc = _field_at(cls, dotted)
        dest = "flag_" + flag.lstrip("-").replace("-", "_")
        help_text = _flag_help(doc, dotted)
        if isinstance(target, tuple):
            parser.add_argument(
                flag, dest=dest, action="store_const", const=const, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=dest, default=None, metavar="VALUE", help=help_text)
        dests[dest] = dotted
    args = parser.parse_args(list(argv) if argv is not None else None)

    # Shortcut flags first, then --set in order: both are overrides of the --config file.
    overrides: list[Override] = []
    for dest, dotted in dests.items():
        value = getattr(args, dest)
        if (
            value is not None
        ):  # a switch's constant, or the flag's text (coerced to the field type like --set)
            overrides.append((dotted, value))
    config = load_config(cls, args.config, [*overrides, *args.overrides])
    if args.print_config:
        print(config_to_yaml(config), end="")
        raise SystemExit(0)
    return config
