"""From decoded spans to entities: char-offset mentions grouped by coreference rules.

This is the glue between the span head and the relation scorer in ``GLiDRE.extract``: the
predicted mentions become :class:`~glidre_core.documents.Entity` objects (ids ``E0``, ``E1``, ...
in text order of their first mention) that the unchanged relation path then scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glidre_core.coreference import CoreferenceMode, MentionCandidate, cluster_mentions, entity_type
from glidre_core.documents import Document, Entity, Mention
from bisect import bisect_left

import numpy as np

from glidre_core.modeling.spans import SpanPrediction, decode_spans, sentence_breaks, within_sentences
from glidre_core.rows import EntityRow, TripletRow
from glidre_core.text import Words


def decode_document_spans(
    doc: Document, words: Words, spans: np.ndarray, probs: np.ndarray, threshold, flat: bool = True
) -> list[SpanPrediction]:
    """Decode one document's span probabilities (host arrays), dropping spans that cross a
    sentence break (annotated ``doc.sentences`` plus the punctuation rule of
    :func:`sentence_breaks`)."""
    spans, probs = np.asarray(spans), np.asarray(probs)
    ends = []
    for _, end in doc.sentences or ():
        k = bisect_left(words.starts, end) - 1  # the last word starting before the sentence end
        if k >= 0:
            ends.append(k)
    keep = within_sentences(spans, sentence_breaks(words.tokens, ends))
    return decode_spans(spans[keep], probs[keep], threshold, flat=flat)


@dataclass
class PredictedEntities:
    """Predicted entities of one document with their word spans (for pooling) and scores."""

    entities: list[Entity]
    mention_spans: list[list[tuple[int, int]]]
    mention_scores: list[list[float | None]]  # None: the recognizer gives no confidence (spaCy)

    @property
    def scores(self) -> list[float | None]:
        """Entity score: the best score among its mentions (None without scores)."""
        return [max((x for x in s if x is not None), default=None) for s in self.mention_scores]


def group_mentions(
    predictions: list[SpanPrediction], words: Words, type_names: list[str], mode: CoreferenceMode
) -> PredictedEntities:
    """Turn word-span predictions into entities. Each mention carries its span score into the
    clustering; an entity's type is the score-weighted vote of its mentions' types
    (:func:`~glidre_core.coreference.entity_type`, rule 3 of :mod:`glidre_core.coreference`):
    equal names merge whatever their predicted types, so one entity may hold several."""
    cands = [
        MentionCandidate(
            start=words.starts[p.start], end=words.ends[p.end - 1],
            text=words.text[words.starts[p.start] : words.ends[p.end - 1]],
            type=type_names[p.type_index], score=p.score,
        )
        for p in predictions
    ]
    entities, spans, scores = [], [], []
    for k, cluster in enumerate(cluster_mentions(cands, mode)):
        entities.append(
            Entity(
                id=f"E{k}", type=entity_type(cands, cluster),
                mentions=[Mention(start=cands[i].start, end=cands[i].end) for i in cluster],
            )
        )
        spans.append([(predictions[i].start, predictions[i].end) for i in cluster])
        scores.append([cands[i].score for i in cluster])
    return PredictedEntities(entities, spans, scores)


@dataclass
class ExtractionResult:
    """What :meth:`GLiDRE.extract_documents` returns per document.

    ``document`` is the input document with the *predicted* entities and relations (the form the
    end-to-end metrics and the extraction job consume); ``entities`` and ``relations`` are the
    same as plain rows.
    """

    document: Document
    entities: list[EntityRow] = field(default_factory=list)
    relations: list[TripletRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"doc_id": self.document.doc_id, "entities": self.entities, "relations": self.relations}


def entity_rows(doc: Document, predicted: PredictedEntities) -> list[EntityRow]:
    """Plain rows: id, type, text (longest mention), score, mentions with char offsets."""
    rows = []
    for ent, scores, score in zip(predicted.entities, predicted.mention_scores, predicted.scores):
        rows.append({
            "id": ent.id, "type": ent.type, "text": doc.entity_text(ent), "score": score,
            "mentions": [
                {"start": m.start, "end": m.end, "text": doc.text[m.start : m.end], "score": s}
                for m, s in zip(ent.mentions, scores)
            ],
        })
    return rows
