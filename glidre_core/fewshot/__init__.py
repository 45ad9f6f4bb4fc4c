"""Few-shot relation extraction: adapting a model to new relation types from a few documents.

One module per job:

* :mod:`.episodes` reads FREDo's documents and episode index files and samples episodes;
* :mod:`.metric` is FREDo's official macro F1 (counts pooled per relation type over all
  episodes, then averaged over types), with a bootstrap interval over episodes;
* :mod:`.adapt` is the adaptation recipe (a pydantic :class:`~.adapt.AdaptationRecipe` and the
  :class:`~.adapt.HeadAdapter` that runs it), used by both the FREDo evaluation and
  ``glidre adapt``;
* :mod:`.candidates` holds the pair rules (same sentence, word gap, text order) that the
  prototype method and the no-model baselines share;
* :mod:`.prototype` is the prototype method (the default recipe): support prototypes, their
  scoring and their files beside a model (``prototypes.safetensors`` + ``prototypes.json``);
* :mod:`.fredo` runs FREDo episodes as Ray tasks (zero-shot and adapted) and scores them;
* :mod:`.workflow` is ``glidre adapt``: labelled support documents in, an adapted model
  directory out (by default the unchanged weights plus prototypes), with optional MLflow tracking.

Nothing heavy is imported here: ``glidre_core.fewshot.metric`` and ``.episodes`` stay torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glidre_core.lazy import lazy_exports

_EXPORTS = {
    "AdaptationRecipe": "glidre_core.fewshot.adapt",
    "HeadAdapter": "glidre_core.fewshot.adapt",
    "Episode": "glidre_core.fewshot.episodes",
    "FredoData": "glidre_core.fewshot.episodes",
    "load_fredo": "glidre_core.fewshot.episodes",
    "EpisodeCounts": "glidre_core.fewshot.metric",
    "macro_scores": "glidre_core.fewshot.metric",
    "FredoConfig": "glidre_core.fewshot.fredo",
    "run_fredo": "glidre_core.fewshot.fredo",
    "adapt_to_documents": "glidre_core.fewshot.workflow",
    "Prototypes": "glidre_core.fewshot.prototype",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from glidre_core.fewshot.adapt import AdaptationRecipe, HeadAdapter
    from glidre_core.fewshot.episodes import Episode, FredoData, load_fredo
    from glidre_core.fewshot.fredo import FredoConfig, run_fredo
    from glidre_core.fewshot.metric import EpisodeCounts, macro_scores
    from glidre_core.fewshot.prototype import Prototypes
    from glidre_core.fewshot.workflow import adapt_to_documents

__getattr__ = lazy_exports(__name__, _EXPORTS)
