"""The GLiDRE model: encoder, pooling, pair scorer, span head (loaded lazily, see glidre_core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from glidre_core.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
