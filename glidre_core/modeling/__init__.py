"""GLiDRE model components: encoder, pooling, scorer, losses, and the model itself."""

from glidre_core.modeling.glidre import GLiDRE, PreparedDocument
from glidre_core.modeling.label_encoder import LabelEmbeddings

__all__ = ["GLiDRE", "LabelEmbeddings", "PreparedDocument"]
