"""Lazy package exports (PEP 562), shared by the package ``__init__`` modules.

Why: ``import glidre_core.documents`` (what the extraction job's pre-processing workers need)
would otherwise run ``glidre_core/__init__.py`` and with it torch and transformers, several
seconds of CPU in every fresh Ray worker process.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) on first access."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
