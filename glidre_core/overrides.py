"""``key.sub=value`` overrides for YAML configs: one implementation for every config loader."""

from __future__ import annotations

from typing import Any

import yaml


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``["a.b=1", "labels=redocred"]`` -> ``{"a.b": 1, "labels": "redocred"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted="a.b"``, creating sections as needed."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"override {dotted!r}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def load_config_data(path, overrides: list[str] | tuple[str, ...] | None = None,
                     values: dict[str, Any] | None = None) -> dict[str, Any]:
    """YAML file (optional) <- ``key=value`` overrides <- already-typed ``values`` (dotted keys).

    The one layering every job config uses. ``values`` is what CLI flags become
    (``{"actors.max_size": 2}``); ``None`` values are ignored so that an unset flag never hides
    the YAML value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a YAML mapping")
    for key, value in parse_overrides(overrides).items():
        set_dotted(data, key, value)
    for key, value in (values or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    return data
