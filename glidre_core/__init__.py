"""glidre_core: GLiDRE document-level relation extraction, its training, evaluation and Ray glue.

The public names below load on first use (PEP 562): ``import glidre_core.documents`` or the
extraction job's pre-processing code must not pull in torch and transformers, which cost several
seconds of CPU in every fresh Ray worker process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glidre_core.lazy import lazy_exports

_EXPORTS = {
    "GLiDREConfig": "glidre_core.config",
    "Document": "glidre_core.documents",
    "DocumentError": "glidre_core.documents",
    "Entity": "glidre_core.documents",
    "Mention": "glidre_core.documents",
    "Relation": "glidre_core.documents",
    "parse_document": "glidre_core.documents",
    "GLiDRE": "glidre_core.modeling.glidre",
    "LabelEmbeddings": "glidre_core.modeling.label_encoder",
    "Predictor": "glidre_core.inference",
    "read_documents": "glidre_core.readers",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from glidre_core.config import GLiDREConfig
    from glidre_core.documents import Document, DocumentError, Entity, Mention, Relation, parse_document
    from glidre_core.modeling.glidre import GLiDRE
    from glidre_core.inference import Predictor
    from glidre_core.modeling.label_encoder import LabelEmbeddings
    from glidre_core.readers import read_documents


__getattr__ = lazy_exports(__name__, _EXPORTS)
