"""Which ordered entity pairs of a document a few-shot method scores.

Few-shot document-level relation extraction on a new domain has almost no signal to tell the
related pairs from the rest, and the official FREDo metric counts every false positive. So
where the relation can hold is decided by rules on the given mentions, before any model score:

* ``all``: every ordered pair of distinct entities;
* ``same_sentence``: the two entities have mentions in a common sentence (by ``sent_id``;
  documents given without sentence ids are split by a rule, :func:`mention_sentences`).
  SciERC annotates relations within sentences (98% of FREDo's cross-domain facts);
* ``same_sentence`` with ``max_gap=g``: and two of those mentions are at most ``g`` words apart
  (the words of the text strictly between them; 0 = adjacent or overlapping). In SciERC a
  relation's arguments are usually close ("a system **for** categorizing unknown words").

:func:`mention_geometry` also gives each pair's text order (does the head's closest mention come
first?), which the prototype method's ``direction="support"`` rule reads.

These rules read only the document's text and mention offsets, which every method that is given
the entities also has. The values the FREDo recipe uses were chosen on its dev slice
(``benchmarks/fredo_prototype_dev.py``). One function serves the prototype method and the
no-model baselines of :mod:`glidre_core.fewshot.fredo`, so that a baseline and a method with the
same rule score exactly the same pairs.
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

import numpy as np

from glidre_core.documents import Document

#: the candidate rules (``AdaptationRecipe.candidates``)
RULES: tuple[str, ...] = ("all", "same_sentence")


#: a sentence ends at ., ! or ? (closing quotes and brackets kept) before whitespace and a capital,
#: digit, quote or bracket: the fallback split for documents without sentence ids
SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of the sentences of ``text`` by :data:`SENTENCE_BREAK`
    (a rule, not a parser: "Dr. Smith" splits; it only serves documents given without any
    sentence ids, where a wrong split costs a candidate pair, not an error)."""
    spans, start = [], 0
    for m in SENTENCE_BREAK.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def mention_sentences(doc: Document) -> list[list[int]]:
    """Sentence index of every mention, per entity (in ``doc.entities`` / ``mentions`` order).

    The mentions' own ``sent_id`` when every mention has one (DocRED-format data); otherwise,
    for every mention, the sentence of ``doc.sentences`` (or, without those,
    :func:`split_sentences`) in which it starts. Mixing given ids with derived ones could put
    two sentences under one id, so it is all or nothing."""
    if all(m.sent_id is not None for e in doc.entities for m in e.mentions):
        return [[int(m.sent_id) for m in e.mentions] for e in doc.entities]  # type: ignore[arg-type]
    starts = [s for s, _ in (doc.sentences or split_sentences(doc.text))]
    return [[bisect.bisect_right(starts, m.start) - 1 for m in e.mentions] for e in doc.entities]


class Geometry(NamedTuple):
    """Where the entities of a document meet (:func:`mention_geometry`), over entity indices."""

    #: ``[n, n]`` the fewest words between a mention of ``i`` and one of ``j`` in a common sentence
    #: (``inf`` when they share none, and on the diagonal)
    gaps: np.ndarray
    #: ``[n, n]`` int8: +1 when, in that closest pair of mentions, ``i``'s comes first, -1 when
    #: ``j``'s does, 0 without a common sentence
    order: np.ndarray
    #: ``[n, n, 2]`` the indices (in ``entity.mentions``) of that closest pair, -1 without one
    closest: np.ndarray


def mention_geometry(doc: Document) -> Geometry:
    """The :class:`Geometry` of ``doc``'s entities: for every pair, its closest two mentions in a
    common sentence, their distance in words and their text order.

    Words are the whitespace-separated pieces of ``doc.text`` strictly between the two mentions;
    overlapping or touching mentions are 0 apart (ties in distance go to the first pair found).
    Sentences are :func:`mention_sentences`'s."""
    n = len(doc.entities)
    gaps = np.full((n, n), np.inf)
    order = np.zeros((n, n), dtype=np.int8)
    closest = np.full((n, n, 2), -1, dtype=np.int64)
    by_sentence: dict[int, list[tuple[int, int, int, int]]] = {}
    for i, (ent, sents) in enumerate(zip(doc.entities, mention_sentences(doc))):
        for k, (m, sent) in enumerate(zip(ent.mentions, sents)):
            by_sentence.setdefault(sent, []).append((m.start, m.end, i, k))
    for mentions in by_sentence.values():
        for a_start, a_end, i, ka in mentions:
            for b_start, b_end, j, kb in mentions:
                if i == j:
                    continue
                first = a_start < b_start or (a_start == b_start and a_end <= b_end)
                lo, hi = (a_end, b_start) if first else (b_end, a_start)
                gap = len(doc.text[lo:hi].split()) if hi > lo else 0
                if gap < gaps[i, j]:
                    gaps[i, j] = gaps[j, i] = gap
                    order[i, j], order[j, i] = (1, -1) if first else (-1, 1)
                    closest[i, j], closest[j, i] = (ka, kb), (kb, ka)
    return Geometry(gaps, order, closest)


def word_gaps(doc: Document) -> np.ndarray:
    """The ``gaps`` of :func:`mention_geometry`."""
    return mention_geometry(doc).gaps


def entity_rules(doc: Document, rule: str, max_gap: int | None = None,
                 orders: bool = False) -> tuple[np.ndarray, Geometry | None]:
    """``(allowed, geometry)`` over entity indices of ``doc`` from one :func:`mention_geometry`
    pass: ``allowed`` ``[n, n]`` booleans, ordered pair ``(i, j)`` is scored under ``rule`` (see
    the module docstring; the diagonal is always False); ``geometry`` the :class:`Geometry`
    when ``orders`` is asked for (text orders, closest mentions), else None. The geometry (a pass
    over every pair of mentions in a sentence) is computed only when the rule or the caller
    needs it."""
    if rule not in RULES:
        raise ValueError(f"unknown candidate rule {rule!r}; expected one of {RULES}")
    if max_gap is not None and rule != "same_sentence":
        raise ValueError("max_gap needs candidates='same_sentence' (the gap is counted within a sentence)")
    n = len(doc.entities)
    geometry = mention_geometry(doc) if rule == "same_sentence" or orders else None
    if geometry is None:
        allowed = ~np.eye(n, dtype=bool)
    else:
        allowed = np.isfinite(geometry.gaps) if rule == "same_sentence" else ~np.eye(n, dtype=bool)
        if max_gap is not None:
            allowed &= geometry.gaps <= max_gap
    return allowed, (geometry if orders else None)


def entity_candidates(doc: Document, rule: str, max_gap: int | None = None) -> np.ndarray:
    """``[n, n]`` booleans over entity indices of ``doc``: ordered pair ``(i, j)`` is scored
    under ``rule`` (the ``allowed`` of :func:`entity_rules`)."""
    return entity_rules(doc, rule, max_gap)[0]


def support_directions(n_labels: int, positives: list[tuple[int, int]]) -> np.ndarray:
    """``[R, 2]`` booleans: label ``r`` may hold on head-first pairs (column 0) / tail-first
    pairs (column 1), from the support's ``(label index, text order)`` positives (orders as
    :func:`mention_geometry`; 0 = no common sentence, ignored). A label shows only the orders
    of its positives; one without an ordered positive keeps both (nothing to learn from)."""
    out = np.ones((n_labels, 2), dtype=bool)
    seen: dict[int, set[int]] = {}
    for r, o in positives:
        if o:
            seen.setdefault(r, set()).add(int(np.sign(o)))
    for r, orders in seen.items():
        out[r] = [1 in orders, -1 in orders]
    return out


def direction_allows(directions: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """``[P, R]`` booleans: the pairs of text ``orders`` (``[P]``) that each label's
    ``directions`` (``[R, 2]``, :func:`support_directions`) allow; unordered pairs (0) pass."""
    o = np.asarray(orders)[:, None]
    return np.where(o > 0, directions[None, :, 0], np.where(o < 0, directions[None, :, 1], True))
