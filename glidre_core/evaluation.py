"""Scoring a model on labelled documents: predictions -> official metrics (+ throughput).

Every function here predicts through the public inference layer
(:class:`glidre_core.inference.Predictor`); threshold sweeps are vectorised over all candidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glidre_core.documents import Document, Entity, Mention
from glidre_core.inference import Predictor, SpanScores
from glidre_core.joint_metrics import end_to_end_relation_scores, entity_scores, mention_units, type_key
from glidre_core.metrics import Fact, evaluate_facts, gold_facts, sweep_threshold, ThresholdSweep
from glidre_core.modeling import GLiDRE, LabelEmbeddings
from glidre_core.modeling.entities import decode_document_spans
from glidre_core.preparation import PreparedDocument
from glidre_core.readers import load_rel_info, relation_labels

logger = logging.getLogger(__name__)


def relation_candidates(
    predictor: Predictor, docs: Sequence[Document | PreparedDocument], floor: float = 0.05
) -> list[tuple[Fact, float]]:
    """Every (fact, probability) with probability above ``floor``: the input of a threshold
    sweep. One pass of the predictor; the selection is numpy over all pairs at once."""
    labels = predictor.relations.labels
    out: list[tuple[Fact, float]] = []
    for sc in predictor.score_relations(docs):
        ids, doc_id = sc.prepared.entity_ids, sc.prepared.doc.doc_id
        pairs, rels = np.nonzero(sc.probs > floor)
        for p, r, prob in zip(pairs.tolist(), rels.tolist(), sc.probs[pairs, rels].tolist()):
            out.append(((doc_id, ids[sc.heads[p]], labels[r], ids[sc.tails[p]]), prob))
    return out


def dev_sweep(
    model: GLiDRE, docs: Sequence[Document], labels: Sequence[str] | LabelEmbeddings | None = None, **kw: Any
) -> ThresholdSweep:
    """Threshold sweep on dev documents (the only place a decision threshold is chosen);
    ``labels`` None = the model's training labels."""
    predictor = model.predictor(relation_labels=labels, **kw)
    return sweep_threshold(relation_candidates(predictor, docs), gold_facts(docs))


def evaluation_labels(docs: Sequence[Document], fmt: str) -> list[str]:
    """The candidate relation labels of an evaluation: the dataset's schema. DocRED / Re-DocRED:
    the 96 relation names of ``rel_info.json`` (the official protocol scores all of them, also
    those absent from the split); other formats: the labels the data uses."""
    if fmt == "docred":
        return sorted(set(load_rel_info().values()))
    return relation_labels(docs)


def prediction_facts(docs: Sequence[Document], preds: Sequence[Sequence[Any]]) -> list[Fact]:
    """Per-document prediction rows (:class:`~glidre_core.rows.TripletRow`: ``head_id``,
    ``relation``, ``tail_id``) -> the facts :func:`~glidre_core.metrics.evaluate_facts` scores. The
    one conversion of every relation evaluation with given entities: GLiDRE's predictor here, the
    LLM baseline in :mod:`glidre_core.llm.rhf`."""
    return [(d.doc_id, row["head_id"], row["relation"], row["tail_id"]) for d, rows in zip(docs, preds) for row in rows]


def evaluate_model(
    model: GLiDRE,
    docs: list[Document],
    labels: Sequence[str] | None = None,
    train_facts: set[tuple[str, str, str]] | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Predict on ``docs`` with the stored (or given) threshold and compute all metrics.

    ``labels`` None = the relation labels the data uses, never the model's training labels: a
    model trained on several corpora would otherwise be scored with other corpora's labels as
    extra candidates (false positives the benchmark protocol does not have). The CLI passes the
    format's full schema where there is one (:func:`evaluation_labels`).
    """
    labels = list(labels) if labels else relation_labels(docs)
    start = time.perf_counter()
    preds = model.predictor(relation_labels=labels, threshold=threshold, batch_size=batch_size).predict(docs)
    elapsed = time.perf_counter() - start
    result = evaluate_facts(docs, prediction_facts(docs, preds), train_facts)
    result.update({
        "docs": len(docs),
        "seconds": elapsed,
        "docs_per_second": len(docs) / elapsed if elapsed else 0.0,
        "threshold": model.config.threshold if threshold is None else threshold,
        "labels": len(labels),
    })
    return result


# -- entity recognition and joint (raw text) evaluation -------------------------------------------
#: entity decision thresholds tried on dev (the span head's threshold is chosen here only)
ENTITY_THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))


def entity_predictions(scored: Sequence[SpanScores], types: LabelEmbeddings, threshold, flat: bool = True) -> list[Document]:
    """Predicted mentions as documents, one single-mention entity per mention (mention-level
    NER needs no clustering)."""
    docs = []
    for item in scored:
        words = item.prepared.words
        found = decode_document_spans(item.prepared.doc, words, item.spans, item.probs, threshold, flat=flat)
        ents = [
            Entity(id=f"M{i}", type=types.labels[p.type_index],
                   mentions=[Mention(start=words.starts[p.start], end=words.ends[p.end - 1])])
            for i, p in enumerate(found)
        ]
        docs.append(item.prepared.doc.model_copy(update={"entities": ents, "relations": []}))
    return docs


def entity_threshold_sweep(
    model: GLiDRE,
    scored: Sequence[SpanScores],
    gold: Sequence[Document],
    types: LabelEmbeddings,
    grid: Sequence[float] = ENTITY_THRESHOLD_GRID,
) -> dict[str, Any]:
    """Strict mention F1 at every threshold of ``grid``; the best one (dev data only).

    Vectorised: spans are decoded once, at the lowest threshold of the grid. Greedy flat
    decoding visits spans from the highest score down, so the spans it keeps at a higher
    threshold are exactly those it keeps at the lowest one that score above it (every
    decision is taken before any lower-scoring span is seen, and with one threshold for all
    types the best type of a span does not depend on it). Each threshold is then a count.
    """
    tn = model.config.entity_label
    gold_units = set().union(*(mention_units(d, tn) for d in gold)) if gold else set()
    lowest = min(grid)
    scores, correct = [], []
    for item in scored:
        words, doc_id = item.prepared.words, item.prepared.doc.doc_id
        for p in decode_document_spans(item.prepared.doc, words, item.spans, item.probs, lowest):
            unit = (doc_id, words.starts[p.start], words.ends[p.end - 1], type_key(tn(types.labels[p.type_index])))
            scores.append(p.score)
            correct.append(unit in gold_units)
    s_arr, c_arr = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    thr = np.asarray(grid, dtype=np.float64)
    above = s_arr[None, :] > thr[:, None]  # [G, predictions]
    n_pred, tp = above.sum(1), (above & c_arr[None, :]).sum(1)
    denom = n_pred + len(gold_units)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    curve = [(float(t), float(f)) for t, f in zip(grid, f1)]
    best_thr, best_f1 = max(curve, key=lambda x: (x[1], -abs(x[0] - 0.5)))
    return {"threshold": best_thr, "f1": best_f1, "curve": curve}


def data_entity_types(model: GLiDRE, docs: Sequence[Document]) -> list[str]:
    """The entity types of labelled data, as the span head's type strings."""
    types = sorted({t for d in docs for e in d.entities if (t := model.config.entity_label(e.type))})
    if not types:
        raise ValueError("the documents have no typed entities to evaluate against")
    return types


def evaluate_entities(
    model: GLiDRE,
    docs: list[Document],
    entity_labels: Sequence[str] | None = None,
    threshold: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Strict (span and type) mention-level entity recognition on ``docs``; ``entity_labels``
    None = the data's own types."""
    types_list = list(entity_labels) if entity_labels else data_entity_types(model, docs)
    start = time.perf_counter()
    predictor = model.predictor(entity_labels=types_list, entity_threshold=threshold, batch_size=batch_size)
    scored = predictor.score_spans(docs)
    preds = entity_predictions(scored, predictor.entity_types, predictor.entity_thresholds)
    elapsed = time.perf_counter() - start
    result = entity_scores(docs, preds, type_name=model.config.entity_label)
    result.update({
        "task": "ner", "docs": len(docs), "seconds": elapsed,
        "docs_per_second": len(docs) / elapsed if elapsed else 0.0,
        "entity_threshold": model.config.entity_threshold if threshold is None else threshold,
        "entity_labels": types_list,
    })
    return result


def evaluate_joint(
    model: GLiDRE,
    docs: list[Document],
    entity_labels: Sequence[str] | None = None,
    relation_labels_: Sequence[str] | None = None,
    entity_threshold: float | None = None,
    threshold: float | None = None,
    match: str = "strict",
    typed: bool = False,
    batch_size: int = 8,
    entity_recognizer: str = "model",
) -> dict[str, Any]:
    """End to end from raw text: ``model.extract_documents`` on the texts alone, then strict
    entity F1 and end-to-end relation F1 (entity matching rule ``match``, with types when
    ``typed``) against the gold. Labels None = the data's own entity types / relation labels."""
    types_list = list(entity_labels) if entity_labels else data_entity_types(model, docs)
    rel_list = list(relation_labels_) if relation_labels_ else relation_labels(docs)
    start = time.perf_counter()
    results = model.extract_documents(
        docs, types_list, rel_list, entity_threshold=entity_threshold, threshold=threshold,
        batch_size=batch_size, entity_recognizer=entity_recognizer,
    )
    elapsed = time.perf_counter() - start
    preds = [r.document for r in results]
    ner = entity_scores(docs, preds, type_name=model.config.entity_label)
    rel = end_to_end_relation_scores(
        docs, preds, match=match, typed=typed, type_name=model.config.entity_label,
        normalize_label=model.config.normalize_label,
    )
    rel.update({
        "task": "joint", "docs": len(docs), "seconds": elapsed,
        "docs_per_second": len(docs) / elapsed if elapsed else 0.0,
        "entity": {k: ner[k] for k in ("precision", "recall", "f1", "tp", "n_pred", "n_gold")},
        "entity_threshold": model.config.entity_threshold if entity_threshold is None else entity_threshold,
        "threshold": model.config.threshold if threshold is None else threshold,
        "entity_labels": types_list, "relation_labels": len(rel_list),
        "coreference": model.config.coreference, "entity_recognizer": entity_recognizer,
    })
    return rel
