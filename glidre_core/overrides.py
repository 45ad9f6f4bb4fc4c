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
