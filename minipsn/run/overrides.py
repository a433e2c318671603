"""How a `Config` is built: defaults → model preset → method → config file → `--set`.

Overrides are dotted strings (`noise.sigma=0.01`) parsed against the field types of config.py's
dataclasses; renamed keys (presets.RENAMED) fail with the new name; a method's defining keys cannot
be overridden. `field_help` reads each field's help from the comment above it in config.py, so the
help has one copy. This module imports config.py, never the reverse: the builders are imported from here
(`from minipsn.run.overrides import build_config`, or `from minipsn import build_config`).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from pathlib import Path

from minipsn.run.config import Config
from minipsn.run.presets import METHODS, PRESETS, RENAMED, TUNABLE, local_spec


def _check_method_keys(method: str, overrides: dict[str, object]) -> None:
    """A method owns the keys that define it: an override that changes one would silently make it
    another method (a `grpo` baseline with σ > 0 is PSN), so it is an error naming both."""
    for key, fixed in METHODS[method].items():
        if key in overrides and key not in TUNABLE.get(method, ()):
            value = _parse_value(overrides[key], type(fixed), key)
            if value != fixed:
                takes = [m for m, keys in METHODS.items() if key not in keys or keys[key] == value
                         or key in TUNABLE.get(m, ())]  # the methods that leave it free or fix it at this value
                instead = f"choose a method that accepts it ({', '.join(takes)})" if takes else "no method accepts it"
                raise ValueError(f"--method {method} fixes {key}={fixed}, but {key}={overrides[key]} was given; "
                                 f"drop it, or {instead}")


def _parse_value(raw: object, typ: type, key: str) -> object:
    """Convert a raw override (a string from the CLI, or a TOML/JSON value) to the field type."""
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects true/false, got {raw!r}")
    if typ in (int, float):
        if isinstance(raw, bool):
            raise ValueError(f"{key} expects {typ.__name__}, got {raw!r}")
        try:
            value = typ(raw) if typ is float else int(str(raw))
        except ValueError:
            raise ValueError(f"{key} expects {typ.__name__}, got {raw!r}") from None
        return value
    if typ is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError(f"{key} expects text, got {raw!r}")
        return str(raw)
    if typing.get_origin(typ) is tuple and typing.get_args(typ)[0] is float:  # numbers: "1,0.5", or a list
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{key} expects comma-separated numbers, got {raw!r}")
        return tuple(_parse_value(x.strip() if isinstance(x, str) else x, float, key) for x in items
                     if not isinstance(x, str) or x.strip())
    if typing.get_origin(typ) is tuple:  # a list of names: "a,b" from the CLI, a list from TOML/JSON
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{key} expects comma-separated names, got {raw!r}")
        return tuple(x.strip() for x in items if x.strip())
    raise TypeError(f"unsupported field type {typ} for {key}")


def _field_types(section_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def apply_overrides(cfg: Config, overrides: dict[str, object]) -> Config:
    """Return a new Config with `{"section.key": value}` applied; unknown keys fail loudly."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    changes: dict[str, dict[str, object]] = {}
    for key, raw in overrides.items():
        section, _, name = key.partition(".")
        if key in RENAMED or section in RENAMED:
            new = RENAMED.get(key) or f"{RENAMED[section]}.{name}"
            raise ValueError(f"{key} is now {new} (the σ controller was renamed, apart from learning-rate schedules)")
        if section not in sections:
            close = difflib.get_close_matches(section, sections, n=3)
            raise ValueError(f"unknown config section {section!r} in {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        types = _field_types(type(getattr(cfg, section)))
        if name not in types:
            close = difflib.get_close_matches(name, types, n=3)
            hint = f" (did you mean {', '.join(section + '.' + c for c in close)}?)" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint}")
        changes.setdefault(section, {})[name] = _parse_value(raw, types[name], key)
    new = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in changes.items()}
    return dataclasses.replace(cfg, **new)


def parse_sets(items: list[str]) -> dict[str, str]:
    """`["a.b=1", ...]` → `{"a.b": "1"}`; a malformed item is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def flatten(nested: dict, prefix: str = "") -> dict[str, object]:
    """`{"noise": {"sigma": 0.1}}` → `{"noise.sigma": 0.1}` (for TOML/JSON config files)."""
    flat: dict[str, object] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_file(path: str | Path) -> dict[str, object]:
    """Read a TOML or JSON config file (sections as tables) into flat overrides."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot parse config file {path}: {e}") from None
    return flatten(data)


def build_config(model: str | None = None, method: str | None = None, file: str | None = None,
                 sets: dict[str, object] | None = None) -> Config:
    """Resolve a Config: defaults → model preset → method → config file → explicit overrides."""
    cfg = Config()
    overrides: dict[str, object] = {}
    if file:
        overrides.update(load_file(file))
    overrides.update(sets or {})
    model = model or str(overrides.get("model.name", cfg.model.name))
    spec = local_spec(model)  # a local model's build seed (ceiling-b2) takes its design's preset
    cfg = apply_overrides(cfg, {"model.name": model, **PRESETS.get(spec[0] if spec else model, {})})
    if method is not None:
        if method not in METHODS:
            close = difflib.get_close_matches(method, METHODS, n=3)
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}" + (f" (did you mean {close[0]}?)" if close else ""))
        _check_method_keys(method, overrides)
        cfg = apply_overrides(cfg, METHODS[method])
    return apply_overrides(cfg, overrides)


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config written by `Config.to_dict` (e.g. from a run folder); a run written before the
    σ controller's rename keeps working."""
    flat = {}
    for key, value in flatten(data).items():
        section, _, name = key.partition(".")
        flat[RENAMED.get(key) or (f"{RENAMED[section]}.{name}" if section in RENAMED else key)] = value
    flat.pop("control.beta", None)  # the old bang-bang rule's factor has no counterpart
    flat = {k: v for k, v in flat.items() if not k.startswith("provenance.")}  # what made it, not a setting
    return apply_overrides(Config(), flat)


def field_help() -> dict[str, str]:
    """`{"section.key": help}`: the comment lines right above each field in config.py, the one copy of a
    field's documentation (`python cli.py config` prints them next to the resolved values)."""
    import ast
    import inspect

    from minipsn.run import config

    source = inspect.getsource(config)
    lines = source.splitlines()
    classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    out = {}
    for section in dataclasses.fields(Config):
        for node in classes[section.default_factory.__name__].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above, i = [], node.lineno - 2  # lineno is 1-based: the line above the field is lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    above.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                out[f"{section.name}.{node.target.id}"] = " ".join(above)
    return out
