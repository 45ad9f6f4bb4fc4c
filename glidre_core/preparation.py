"""Documents turned into model inputs, without the model (and without torch).

:func:`prepare_document` is the one implementation of "words, sub-word windows and mention word
spans of a document": :meth:`GLiDRE.prepare` calls it, and so do the extraction job's CPU tasks,
which import only this module, the document types and the sub-word tokenizer, so a worker that
only pre-processes starts in a fraction of a second instead of loading torch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from glidre_core.documents import Document, DocumentError
from glidre_core.modeling.windows import TokenizedDocument, tokenize_words
from glidre_core.text import SpanAlignmentError, Words, char_span_to_words, split_words, word_shapes


@dataclass
class PreparedDocument:
    """A document turned into model inputs: words, sub-word windows, mention word spans."""

    doc: Document
    tokens: TokenizedDocument
    mention_spans: list[list[tuple[int, int]]]  # per entity, [w0, w1) word spans
    entity_ids: list[str]
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (head idx, label, tail idx)
    words: Words | None = None  # char offsets of the words (span predictions -> char mentions)
    # entity types this document's corpus annotates (training); None = every type scored
    entity_type_scope: frozenset[str] | None = None
    #: the document's weight in the relation loss (training: its corpus's ``relation_weight``)
    relation_weight: float = 1.0
    #: ``[W]`` :data:`~glidre_core.text.WORD_SHAPES` of the words, computed here once (span heads
    #: with word shapes read them in every batch); None = computed when a batch needs them
    word_shapes: np.ndarray | None = None
    #: derived data that building training batches reuses (gold span arrays per entity-type
    #: set, :func:`glidre_core.modeling.targets.span_target_arrays`); filled on first use
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)


def prepare_document(
    doc: Document,
    tokenizer: Any,
    max_length: int,
    overlap: int,
    normalize_label: Callable[[str], str] | None = None,
) -> PreparedDocument:
    """Model inputs of ``doc`` without the model: the one implementation used by
    :meth:`GLiDRE.prepare` and by the CPU pre-processing tasks of the extraction job."""
    words = split_words(doc.text)
    if len(words) == 0:
        raise DocumentError(doc.doc_id, "text", "no words in the text")
    spans: list[list[tuple[int, int]]] = []
    for i, ent in enumerate(doc.entities):
        ent_spans = []
        for j, m in enumerate(ent.mentions):
            try:
                ent_spans.append(char_span_to_words(words, m.start, m.end, context=f"{doc.doc_id}: "))
            except SpanAlignmentError as exc:
                raise DocumentError(doc.doc_id, f"entities[{i}].mentions[{j}]", str(exc)) from None
        spans.append(ent_spans)
    norm = normalize_label or (lambda x: x)
    index = {e.id: i for i, e in enumerate(doc.entities)}
    rels = [(index[r.head], norm(r.label), index[r.tail]) for r in doc.relations]
    rels = [r for r in rels if r[0] != r[2]]
    tokens = tokenize_words(words.tokens, tokenizer, max_length, overlap)
    return PreparedDocument(doc, tokens, spans, [e.id for e in doc.entities], rels, words,
                            word_shapes=word_shapes(words.tokens))
