"""Run configs from one YAML recipe plus `key=value` overrides, built into typed (nested) dataclasses.

    cfg = load_run_config("examples/qwen2.5-math-7b_1node.yaml", ["algorithm.kl_coef=0.01", "data.paths=[a.jsonl]"])
    (run_dir / "config.yaml").write_text(dump_run_config(cfg))      # loads back to an equal config

The dataclass tree is built from the type hints (nested and frozen dataclasses, `X | None`, `list[X]`, `tuple[X, ...]`,
`dict[K, V]`, enums by value, `Any`); values are checked strictly (an int field refuses 2.0, "2" and true; a float
field refuses .inf and .nan) so a typo fails here, not hours into a run. Every problem is one `ConfigError` line
naming where it came from (`recipe.yaml:12`, or `command line`) and the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

DEFAULT_RECIPE = Path(__file__).resolve().parent / "grpo" / "recipes" / "tiny_demo.yaml"
COMMAND_LINE = "command line"
# PyYAML follows YAML 1.1, where `3e-6` (no dot) is a string; float fields accept such numerals.
_NUMERAL = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")

Key = tuple  # a path into the config: field names (str) and list indices (int)


class ConfigError(ValueError):
    """A bad recipe or override; the message is one line naming the source (file:line or command line) and key."""


def load_run_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (), cls: type | None = None,
                    prepare: typing.Callable[[dict], None] | None = None):
    """Read the YAML recipe at `path` (None: the command's built-in recipe, `cls.DEFAULT_RECIPE`), apply dotted
    `key=value` overrides (values parsed as YAML: numbers, true/false, null, [lists], {maps}) and build the config
    dataclass `cls` (default GRPORunConfig). `prepare(data)`, when given, may edit the mapping after the
    overrides, before it is built (evaluation/benchmark_suite.py copies each benchmark's key into its `name`)."""
    if cls is None:
        from r1_megatron.grpo.config import GRPORunConfig as cls
    recipe = Path(getattr(cls, "DEFAULT_RECIPE", DEFAULT_RECIPE)) if path is None else Path(path)
    data, sources, name = read_recipe(recipe, overrides, name=recipe.name if path is None else None)
    if prepare is not None:
        prepare(data)
    return build_config(cls, data, sources, name)


def read_recipe(path: str | os.PathLike, overrides: Sequence[str] = (), *, name: str | None = None
                ) -> tuple[dict, dict[Key, str], str]:
    """(data, sources, name): the recipe's mapping after the overrides, where each key was written ("file:line"
    or "command line") and the name messages give the file; for commands that build their config in parts (the
    pipeline builds each stage's section as that command's config, `build_config(..., key=...)`)."""
    name = os.fspath(path) if name is None else name
    data, sources = _read_recipe(Path(path), name)
    for item in overrides:
        _apply_override(data, sources, item)
    return data, sources, name


def build_config(cls: type, data: dict, sources: dict[Key, str], name: str, key: Key = ()):
    """The dataclass `cls` built from `data` as load_run_config builds it; `key`: where `data` sits in the recipe
    that `sources` describes (messages then name the full dotted key, e.g. stages.sft.config.data.paths)."""
    return _Builder(cls, sources, name).build(cls, data, key)


def dump_run_config(cfg) -> str:
    """YAML of the whole resolved config (every field, enums as their values); load_run_config reads it back."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


def config_to_dict(value) -> Any:
    """Plain YAML/JSON data for a config: dataclasses as dicts in field order, enums as values, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: config_to_dict(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, enum.Enum):
        return config_to_dict(value.value)
    if isinstance(value, dict):
        return {config_to_dict(k): config_to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_to_dict(v) for v in value]
    return value


# ---- reading: the data, and where each key came from --------------------------------------------------------


def _read_recipe(path: Path, name: str) -> tuple[dict, dict[Key, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        sources: dict[Key, str] = {}
        if node is not None:
            _record_lines(node, (), name, sources)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(name, e)) from None
    finally:
        loader.dispose()
    if data is None:
        return {}, sources
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of sections at the top level, got {_show(data)}")
    return data, sources


def _yaml_problem(name: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = getattr(error, "problem", None) or str(error)
    return _one_line(f"{where}: invalid YAML: {problem}")


def _record_lines(node: yaml.Node, key: Key, name: str, sources: dict[Key, str]) -> None:
    """sources[key] = "name:line" for every mapping key and list item under `node`; duplicate keys are errors
    (PyYAML would silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # complex or merge keys: the builder reports them without a line
            child = key + (key_node.value,)
            if child in sources:
                raise ConfigError(f"{name}:{key_node.start_mark.line + 1}: duplicate key '{_dotted(child)}' "
                                  f"(first at {sources[child]})")
            sources[child] = f"{name}:{key_node.start_mark.line + 1}"
            _record_lines(value_node, child, name, sources)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sources[key + (i,)] = f"{name}:{item.start_mark.line + 1}"
            _record_lines(item, key + (i,), name, sources)


def _apply_override(data: dict, sources: dict[Key, str], item: str) -> None:
    """data[a][b][c] = yaml(value) for "a.b.c=value"; the key and everything under it now come from the
    command line."""
    raw_key, sep, raw_value = item.partition("=")
    parts = tuple(raw_key.strip().split("."))
    if not sep or not all(parts):
        raise ConfigError(f"{COMMAND_LINE}: override {item!r} must be key=value (a dotted key, e.g. "
                          "rollout.group_size=8)")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError as e:
        raise ConfigError(_one_line(f"{COMMAND_LINE}: override {item!r}: invalid value: "
                                    f"{getattr(e, 'problem', None) or e}")) from None
    section = data
    for depth, part in enumerate(parts[:-1]):
        if section.get(part) is None:  # absent, or an empty section (`model:` with nothing under it)
            section[part] = {}
            sources.setdefault(parts[:depth + 1], COMMAND_LINE)  # a section named only here (maybe misspelled)
        inner = section[part]
        if not isinstance(inner, dict):
            raise ConfigError(f"{COMMAND_LINE}: override {item!r}: '{'.'.join(parts[:depth + 1])}' is a value "
                              f"({_show(inner)}), not a section")
        section = inner
    section[parts[-1]] = value
    for key in [k for k in sources if k[:len(parts)] == parts]:
        del sources[key]
    sources[parts] = COMMAND_LINE


# ---- building: typed values and dataclasses -----------------------------------------------------------------


class _Builder:
    def __init__(self, root: type, sources: dict[Key, str], name: str):
        self.root, self.sources, self.name = root, sources, name

    def source(self, key: Key) -> str:
        """Where `key` (or the nearest enclosing key) was written; the recipe file for defaults."""
        for n in range(len(key), 0, -1):
            if key[:n] in self.sources:
                return self.sources[key[:n]]
        return self.name

    def fail(self, key: Key, message: str) -> typing.NoReturn:
        raise ConfigError(_one_line(f"{self.source(key)}: {message}"))

    def build(self, cls: type, data, key: Key):
        """An instance of dataclass `cls` from the mapping `data`; its own validation errors become ConfigErrors."""
        if not isinstance(data, dict):
            self.fail(key, f"{_dotted(key) or 'the config'}: expected a mapping of {cls.__name__} fields, "
                           f"got {_show(data)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        for name in data:
            if name not in fields:
                self.fail(key + (name,), f"unknown key '{_dotted(key + (name,))}'{_suggestion(self.root, cls, name)}")
        kwargs = {name: self.value(hints[name], data[name], key + (name,)) for name in data}
        for name, f in fields.items():
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(key, f"missing required key '{_dotted(key + (name,))}'")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as e:
            text = str(e)
            if len(key) > 1 and text.startswith(f"{key[-1]}."):  # a component names its own section: say where
                text = f"{_dotted(key[:-1])}.{text}"  # it sits ("cache.block_size" -> "rollout.cache.block_size")
            raise ConfigError(_one_line(f"{self.validation_source(key, text)}: {text}")) from None

    def validation_source(self, key: Key, message: str) -> str:
        """Where the keys a validation message names were written (the given keys under `key` that appear in it,
        longest first, e.g. "algorithm.mini_batches" before "algorithm"), else the section's own source."""
        given = sorted((k for k in self.sources if len(k) > len(key) and k[:len(key)] == key),
                       key=lambda k: -len(_dotted(k[len(key):])))
        found: list[str] = []
        for k in given:
            pattern = rf"(?<!\w){re.escape(_dotted(k[len(key):]))}(?!\w)"
            if re.search(pattern, message):
                message = re.sub(pattern, " ", message)  # so "algorithm" does not match inside it again
                found += [self.sources[k]] if self.sources[k] not in found else []
        return ", ".join(found) or self.source(key)

    def value(self, tp, value, key: Key):
        """`value` checked and converted to the type `tp`."""
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            return self.union(args, value, key)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, {} if value is None else value, key)  # an empty section: the defaults
        if origin is list:
            return self.sequence(args[0] if args else Any, value, key)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list, kept immutable
            return tuple(self.sequence(args[0], value, key))
        if origin is dict:
            return self.mapping(args or (Any, Any), value, key)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self.enum(tp, value, key)
        if tp in (bool, int, float, str):
            return self.scalar(tp, value, key)
        raise TypeError(f"run_config: unsupported field type {tp!r} at '{_dotted(key)}'")

    def union(self, args: tuple, value, key: Key):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message ("expected int, got 'two'")
            return self.value(options[0], value, key)
        for option in options:
            try:
                return self.value(option, value, key)
            except ConfigError:
                continue
        self.fail(key, f"{_dotted(key)}: expected {' or '.join(_type_name(a) for a in args)}, got {_show(value)}")

    def sequence(self, item_tp, value, key: Key) -> list:
        if isinstance(value, str):  # a lone string for a list of strings: data.paths=train.jsonl
            value = [value]
        if not isinstance(value, list):
            self.fail(key, f"{_dotted(key)}: expected a list, got {_show(value)}")
        return [self.value(item_tp, v, key + (i,)) for i, v in enumerate(value)]

    def mapping(self, args: tuple, value, key: Key) -> dict:
        if not isinstance(value, dict):
            self.fail(key, f"{_dotted(key)}: expected a mapping, got {_show(value)}")
        key_tp, value_tp = args
        return {self.value(key_tp, k, key + (k,)): self.value(value_tp, v, key + (k,)) for k, v in value.items()}

    def enum(self, tp: type[enum.Enum], value, key: Key):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            self.fail(key, f"{_dotted(key)}: expected one of {allowed}, got {_show(value)}")

    def scalar(self, tp: type, value, key: Key):
        if tp is float:
            return self.finite_float(value, key)
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
        hint = " (quote it to pass a string)" if tp is str and value is not None else ""
        self.fail(key, f"{_dotted(key)}: expected {tp.__name__}, got {_show(value)}{hint}")

    def finite_float(self, value, key: Key) -> float:
        """Every float of every section must be finite: no field reads .inf as "no limit" (that is 0 or null
        where a limit can be off), and an inf or NaN that slipped through would switch a safety off
        (optimizer.clip_grad=.inf, rewards.timeout_s=.inf) or wreck the run (optimizer.lr=.inf)."""
        if isinstance(value, str) and _NUMERAL.fullmatch(value.strip()):
            value = float(value)  # 1e999 (a string in YAML 1.1) is inf here
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer literal beyond float's range
                number = math.inf
            if math.isfinite(number):
                return number
            self.fail(key, f"{_dotted(key)}: expected a finite float, got {number}")
        self.fail(key, f"{_dotted(key)}: expected float, got {_show(value)}")


# ---- messages ------------------------------------------------------------------------------------------------


def _suggestion(root: type, cls: type, name) -> str:
    """' (did you mean 'x'?)': a close field name of the section `cls`, else the full path of a field called
    `name` elsewhere in the `root` tree (a key written in the wrong section)."""
    close = difflib.get_close_matches(str(name), [f.name for f in dataclasses.fields(cls) if f.init], n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    elsewhere = [path for path in _field_paths(root, ()) if path[-1] == name]
    return f" (did you mean '{_dotted(elsewhere[0])}'?)" if elsewhere else ""


def _field_paths(cls: type, key: Key):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            yield key + (f.name,)
            if dataclasses.is_dataclass(hints[f.name]):
                yield from _field_paths(hints[f.name], key + (f.name,))


def _dotted(key: Key) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _type_name(tp) -> str:
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _show(value) -> str:
    return "null" if value is None else repr(value)


def _one_line(message: str) -> str:
    return " ".join(message.split())
