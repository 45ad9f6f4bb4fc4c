"""The GLiDRE model: encoder, pooling, pair scorer, span head (loaded lazily, see glidre_core)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "GLiDRE": "glidre_core.modeling.glidre",
    "PreparedDocument": "glidre_core.preparation",
    "LabelEmbeddings": "glidre_core.modeling.label_encoder",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from glidre_core.modeling.glidre import GLiDRE
    from glidre_core.modeling.label_encoder import LabelEmbeddings
    from glidre_core.preparation import PreparedDocument


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'glidre_core.modeling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
