"""Joint (raw-text) metrics: entity recognition and end-to-end relation extraction.

:mod:`glidre_core.metrics` scores relations over *gold* entities. Here the entities are predicted
too, so a predicted fact can only be right if its entities are. Gold and predicted inputs are both
:class:`~glidre_core.documents.Document` lists: a predicted document has the same ``doc_id`` and
``text`` as its gold document, its ``entities`` are predicted clusters (predicted ``type``,
character-offset mentions) and its ``relations`` are predicted facts between predicted entity ids.

All precision / recall / F1 values are **fractions in [0, 1]** (the convention of
:mod:`glidre_core.metrics`), micro-averaged over the whole corpus.

Pairing documents
    Documents are paired by ``doc_id``. A gold document without a prediction counts as all-missed
    (nothing predicted, everything in it is a false negative). A predicted ``doc_id`` absent from
    gold, a ``doc_id`` repeated within gold or within predictions, or a predicted text that differs
    from the gold text raise :class:`~glidre_core.documents.DocumentError` (a ``ValueError``) naming
    the document: offsets are only comparable over the same text, and silently ignoring a
    prediction would inflate precision.

Entity recognition (:func:`entity_scores`)
    Strict mention-level NER, the usual CoNLL-style criterion: the unit is
    ``(doc_id, start, end, type_name(entity.type))`` for every mention of every entity, and a
    predicted unit is a true positive only if span *and* type match a gold unit. Units are sets, so
    identical duplicates count once. ``untyped`` scores spans only; ``per_type`` is keyed by the
    gold/predicted type name (``"<none>"`` for an entity without a type).

End-to-end relations (:func:`end_to_end_relation_scores`)
    A predicted fact ``(head, label, tail)`` is correct when both of its entities *match* gold
    entities and its normalised label equals the label of a gold fact between those gold
    entities. Predicted entities are first mapped to gold entities by one of two rules:

    ``"strict"`` (default)
        A predicted entity matches the gold entity whose set of mention spans ``{(start, end)}``
        is *equal* to its own (and, with ``typed=True``, whose type name is equal). This is the
        standard criterion: for CoNLL04 (one mention per entity) it is exactly "both entity spans
        (and types) right", the SpERT "strict" evaluation; for (Re-)DocRED it is the JEREX cluster
        match — a fact only counts if the whole coreference cluster was recovered. It is the number
        to report for comparisons with published joint systems.

    ``"relaxed"``
        A predicted entity is mapped to the gold entity with which it shares the *most* exact
        mention spans (at least one). Ties go to the gold entity listed first in
        ``gold.entities``; with ``typed=True``, tied candidates of the predicted type are preferred
        first, and the entity is unmatched if the chosen candidate's type differs. This separates
        relation errors from coreference errors on Re-DocRED, where one missed pronoun in a
        ten-mention cluster would otherwise void every fact of that entity. Several predicted
        entities may map to the same gold entity (a split cluster); predicted facts are therefore
        compared *after* mapping to gold ids and **deduplicated**: the same gold fact predicted
        twice through two predicted entities of one gold entity counts once as a true positive, and
        the duplicate is *not* a false positive (the system found the fact; it was penalised for
        the split cluster by the entity metric, not here).

    Under both rules, facts with an unmatched predicted entity are false positives (kept apart per
    predicted entity id, and also deduplicated after mapping). Self-relations — head and tail the
    same entity after mapping — are dropped from predictions, and gold self-relations are ignored,
    as in :func:`glidre_core.metrics.gold_facts`. ``normalize_label`` is applied to gold and
    predicted labels alike (e.g. to compare ``"Live_In"`` with ``"live in"``).

    With ``strict`` matching, if several gold entities have the same span set, the first one of
    the right type (``typed=True``) or simply the first one is used.

Token-level spans (:func:`snap_to_tokens`)
    Pre-tokenised corpora (CoNLL04, DocRED) annotate *tokens*; our readers join them with single
    spaces, and the model predicts spans over its own words, which split punctuation off. A
    corpus token such as ``"Dallas."`` (a sentence-final period glued to the name, as the corpus
    tokenised it) is then an entity the model can only predict as ``"Dallas"``. SpERT and the
    other CoNLL04 systems predict over the corpus tokens, so they cannot make that error. Scoring
    over tokens widens each predicted mention to the whitespace-delimited tokens it touches
    before the comparison; the gold spans are tokens already. ``glidre evaluate`` does this for
    ``--format conll04`` (``--spans tokens``), which is the comparable protocol there, and reports
    the character-exact scores too (``chars``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

from glidre_core.documents import Document, DocumentError, Entity
from glidre_core.metrics import _prf

TypeName = Callable[[str | None], str | None]
"""Maps a raw entity type (``"PER"``, ``"Peop"``) to a comparable name; default identity."""

EntityMatch = Literal["strict", "relaxed"]

NO_TYPE = "<none>"  # per_type key for entities without a type


def _identity(x: Any) -> Any:
    return x


def _scores(tp: int, n_pred: int, n_gold: int) -> dict[str, Any]:
    r = _prf(tp, n_pred, n_gold)
    return {"precision": r["precision"], "recall": r["recall"], "f1": r["f1"],
            "tp": tp, "n_pred": n_pred, "n_gold": n_gold}


def _breakdown(gold_keys: Counter, pred_keys: Counter, tp_keys: Counter) -> dict[str, dict[str, Any]]:
    out = {}
    for key in sorted(set(gold_keys) | set(pred_keys)):
        r = _prf(tp_keys[key], pred_keys[key], gold_keys[key])
        out[key] = {"precision": r["precision"], "recall": r["recall"], "f1": r["f1"],
                    "support": gold_keys[key]}
    return out


def pair_documents(
    gold: Sequence[Document], pred: Sequence[Document]
) -> list[tuple[Document, Document | None]]:
    """(gold, prediction or None) per gold document, in gold order; see the module docstring."""
    gold_by_id: dict[str, Document] = {}
    for d in gold:
        if d.doc_id in gold_by_id:
            raise DocumentError(d.doc_id, "doc_id", "document id appears twice in gold documents")
        gold_by_id[d.doc_id] = d
    pred_by_id: dict[str, Document] = {}
    for d in pred:
        if d.doc_id not in gold_by_id:
            raise DocumentError(d.doc_id, "doc_id", "predicted document id not found in gold documents")
        if d.doc_id in pred_by_id:
            raise DocumentError(d.doc_id, "doc_id", "document id appears twice in predicted documents")
        if d.text != gold_by_id[d.doc_id].text:
            raise DocumentError(d.doc_id, "text", "predicted text differs from the gold text")
        pred_by_id[d.doc_id] = d
    return [(g, pred_by_id.get(g.doc_id)) for g in gold]


def type_key(t: str | None) -> str:
    return NO_TYPE if t is None else str(t)


def mention_units(doc: Document | None, type_name: TypeName) -> set[tuple[str, int, int, str]]:
    """The (doc id, start, end, type key) units of every mention of ``doc`` (strict NER)."""
    if doc is None:
        return set()
    return {(doc.doc_id, m.start, m.end, type_key(type_name(e.type)))
            for e in doc.entities for m in e.mentions}


def entity_scores(
    gold: Sequence[Document], pred: Sequence[Document], type_name: TypeName | None = None
) -> dict[str, Any]:
    """Strict mention-level NER scores (span and type must match); fractions in [0, 1].

    Returns ``precision, recall, f1, tp, n_pred, n_gold``, ``untyped`` (span-only scores) and
    ``per_type`` (``{type: {precision, recall, f1, support}}``, support = gold mentions).
    """
    tn = type_name or _identity
    g_units: set[tuple[str, int, int, str]] = set()
    p_units: set[tuple[str, int, int, str]] = set()
    for g, p in pair_documents(gold, pred):
        g_units |= mention_units(g, tn)
        p_units |= mention_units(p, tn)
    tp_units = g_units & p_units
    result = _scores(len(tp_units), len(p_units), len(g_units))

    g_spans = {u[:3] for u in g_units}
    p_spans = {u[:3] for u in p_units}
    result["untyped"] = _scores(len(g_spans & p_spans), len(p_spans), len(g_spans))

    result["per_type"] = _breakdown(
        Counter(u[3] for u in g_units), Counter(u[3] for u in p_units), Counter(u[3] for u in tp_units)
    )
    return result


def snap_to_tokens(docs: Sequence[Document]) -> list[Document]:
    """``docs`` with every mention widened to whole whitespace-delimited tokens of its text
    (a mention that already starts and ends at whitespace or a text edge is unchanged)."""
    out = []
    for doc in docs:
        text = doc.text
        entities = []
        for e in doc.entities:
            mentions = []
            for m in e.mentions:
                start, end = m.start, m.end
                while start > 0 and not text[start - 1].isspace():
                    start -= 1
                while end < len(text) and not text[end].isspace():
                    end += 1
                mentions.append(m if (start, end) == (m.start, m.end) else m.model_copy(update={"start": start, "end": end}))
            entities.append(e.model_copy(update={"mentions": mentions}))
        out.append(doc.model_copy(update={"entities": entities}))
    return out


def _spans(e: Entity) -> frozenset[tuple[int, int]]:
    return frozenset((m.start, m.end) for m in e.mentions)


def match_entities(
    gold_doc: Document,
    pred_doc: Document,
    match: EntityMatch = "strict",
    typed: bool = False,
    type_name: TypeName | None = None,
) -> dict[str, str | None]:
    """Predicted entity id -> matched gold entity id (None if unmatched), by the rule ``match``."""
    if match not in ("strict", "relaxed"):
        raise ValueError(f"unknown entity match rule {match!r}; expected 'strict' or 'relaxed'")
    tn = type_name or _identity
    gold_ents = [(e.id, _spans(e), tn(e.type)) for e in gold_doc.entities]
    out: dict[str, str | None] = {}
    for pe in pred_doc.entities:
        ps, pt = _spans(pe), tn(pe.type)
        if match == "strict":
            cands = [(gid, gt) for gid, gs, gt in gold_ents if gs == ps]
        else:
            overlaps = [(len(gs & ps), gid, gt) for gid, gs, gt in gold_ents]
            best = max((o for o, _, _ in overlaps), default=0)
            cands = [(gid, gt) for o, gid, gt in overlaps if best and o == best]
        chosen = None
        if cands:
            if typed:
                typed_cands = [gid for gid, gt in cands if gt == pt]
                chosen = typed_cands[0] if typed_cands else None
            else:
                chosen = cands[0][0]
        out[pe.id] = chosen
    return out


def end_to_end_relation_scores(
    gold: Sequence[Document],
    pred: Sequence[Document],
    *,
    match: EntityMatch = "strict",
    typed: bool = False,
    type_name: TypeName | None = None,
    normalize_label: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """End-to-end relation scores with predicted entities; rules in the module docstring.

    Returns ``precision, recall, f1, tp, n_pred, n_gold`` (fractions in [0, 1]; counts after
    mapping and deduplication), ``match``, ``typed`` and ``per_relation``
    (``{label: {precision, recall, f1, support}}`` over normalised labels).
    """
    if match not in ("strict", "relaxed"):
        raise ValueError(f"unknown entity match rule {match!r}; expected 'strict' or 'relaxed'")
    norm = normalize_label or _identity
    g_facts: set[tuple[Any, ...]] = set()
    p_facts: set[tuple[Any, ...]] = set()
    for g, p in pair_documents(gold, pred):
        g_facts |= {(g.doc_id, r.head, norm(r.label), r.tail) for r in g.relations if r.head != r.tail}
        if p is None:
            continue
        mapping = match_entities(g, p, match=match, typed=typed, type_name=type_name)

        def key(pid: str) -> Any:
            gid = mapping.get(pid)
            # unmatched entities stay distinct per predicted id and never equal a gold id (a str)
            return gid if gid is not None else ("unmatched", pid)

        for r in p.relations:
            h, t = key(r.head), key(r.tail)
            if h == t:
                continue  # self-relation after mapping
            p_facts.add((p.doc_id, h, norm(r.label), t))
    tp_facts = g_facts & p_facts
    result = _scores(len(tp_facts), len(p_facts), len(g_facts))
    result["match"] = match
    result["typed"] = typed
    result["per_relation"] = _breakdown(
        Counter(f[2] for f in g_facts), Counter(f[2] for f in p_facts), Counter(f[2] for f in tp_facts)
    )
    return result
