"""Reading ``{label: value}`` files: the one loader behind label phrasings and label descriptions.

Both are small user-editable mappings keyed by relation label (a named set shipped with the
package, or a JSON / YAML file), and a mistake in one should fail before a run starts, naming
the file and the entry. Only the shape of a value differs (a list of phrasings, one description
string), so each caller passes its own ``convert`` and keeps its own value rules; resolving the
source, parsing and the error messages live here once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["load_label_mapping"]

V = TypeVar("V")


def load_label_mapping(
    source: str | Path,
    named: Mapping[str, Path],
    what: str,
    convert: Callable[[Any], V | None],
    expected: str,
) -> dict[str, V]:
    """``{label: convert(value)}`` from the named set ``source`` (a key of ``named``) or a JSON
    (``.json``) / YAML (any other suffix) file.

    ``what`` names the mapping in errors ("label phrasings"); ``convert`` returns the cleaned
    value, or None when the value is malformed; ``expected`` says what a value must be.
    Raises ``ValueError`` naming the source (and the named sets) when it does not exist, and
    the file and the entry when an entry is malformed."""
    path = named.get(str(source), Path(source))
    if not path.exists():
        raise ValueError(f"{what} {str(source)!r}: no such file (named sets: {sorted(named)})")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{what} {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a mapping of label to {expected}")
    out: dict[str, V] = {}
    for label, value in data.items():
        converted = convert(value) if isinstance(label, str) and label.strip() else None
        if converted is None:
            raise ValueError(f"{what} {path}: entry {label!r} must map a label to {expected}")
        out[label] = converted
    return out
