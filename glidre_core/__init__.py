"""glidre_core: GLiDRE document-level relation extraction, its training, evaluation and Ray glue."""

from glidre_core.config import GLiDREConfig
from glidre_core.documents import Document, DocumentError, Entity, Mention, Relation, parse_document
from glidre_core.modeling import GLiDRE, LabelEmbeddings
from glidre_core.readers import read_documents

__all__ = [
    "Document", "DocumentError", "Entity", "GLiDRE", "GLiDREConfig", "LabelEmbeddings", "Mention",
    "Relation", "parse_document", "read_documents",
]
