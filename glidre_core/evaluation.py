"""Scoring a model on labelled documents: predictions -> official metrics (+ throughput)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glidre_core.documents import Document, Entity, Mention
from glidre_core.joint_metrics import end_to_end_relation_scores, entity_scores
from glidre_core.metrics import Fact, evaluate_facts, gold_facts, sweep_threshold, ThresholdSweep
from glidre_core.modeling import GLiDRE, LabelEmbeddings
from glidre_core.modeling.glidre import PreparedDocument
from glidre_core.modeling.entities import decode_document_spans
from glidre_core.readers import load_rel_info, relation_labels

logger = logging.getLogger(__name__)


@torch.no_grad()
def score_candidates(
    model: GLiDRE,
    docs: Sequence[Document],
    labels: LabelEmbeddings,
    floor: float = 0.05,
    batch_size: int = 4,
    cached_lower: dict[str, list[torch.Tensor]] | None = None,
    prepared: dict[str, Any] | None = None,
    encoded: dict[str, Any] | None = None,
) -> list[tuple[Fact, float]]:
    """Every (fact, probability) with probability above ``floor``."""
    out: list[tuple[Fact, float]] = []
    for p, sc in scored_batches(model, docs, labels, None, batch_size, prepared, cached_lower, encoded):
        probs = sc.probabilities()
        for pi, ri in (probs > floor).nonzero().tolist():
            h = p.entity_ids[int(sc.heads[pi])]
            t = p.entity_ids[int(sc.tails[pi])]
            out.append(((p.doc.doc_id, h, labels.labels[ri], t), float(probs[pi, ri])))
    return out


def scored_batches(
    model: GLiDRE,
    docs: Sequence[Document],
    labels: LabelEmbeddings | None,
    entity_types: LabelEmbeddings | None,
    batch_size: int = 4,
    prepared: dict[str, Any] | None = None,
    cached_lower: dict[str, list[torch.Tensor]] | None = None,
    encoded: dict[str, Any] | None = None,
):
    """(prepared document, scores) for ``docs`` in eval mode without gradients, batch by batch,
    from the training caches when given (``prepared`` / ``cached_lower`` / ``encoded`` by id)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(docs), batch_size):
                batch = docs[s : s + batch_size]
                preps = [prepared[d.doc_id] if prepared else model.prepare(d) for d in batch]
                cache = [cached_lower[d.doc_id] for d in batch] if cached_lower else None
                enc = [encoded[d.doc_id] for d in batch] if encoded else None
                yield from zip(preps, model.score_documents(preps, labels, cache, entity_types, enc))
    finally:
        model.train(was)


def dev_sweep(model: GLiDRE, docs: Sequence[Document], labels: LabelEmbeddings, **kw) -> ThresholdSweep:
    """Threshold sweep on dev documents (the only place a decision threshold is chosen)."""
    return sweep_threshold(score_candidates(model, docs, labels, **kw), gold_facts(docs))


def evaluation_labels(docs: Sequence[Document], fmt: str) -> list[str]:
    """The candidate relation labels of an evaluation: the dataset's schema. DocRED / Re-DocRED:
    the 96 relation names of ``rel_info.json`` (the official protocol scores all of them, also
    those absent from the split); other formats: the labels the data uses."""
    if fmt == "docred":
        return sorted(set(load_rel_info().values()))
    return relation_labels(docs)


def evaluate_model(
    model: GLiDRE,
    docs: list[Document],
    labels: Sequence[str] | None = None,
    train_facts: set[tuple[str, str, str]] | None = None,
    threshold: float | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Predict on ``docs`` with the stored (or given) threshold and compute all metrics.

    ``labels`` None = the relation labels the data uses, never the model's training labels: a
    model trained on several corpora would otherwise be scored with other corpora's labels as
    extra candidates (false positives the benchmark protocol does not have). The CLI passes the
    format's full schema where there is one (:func:`evaluation_labels`).
    """
    labels = list(labels) if labels else relation_labels(docs)
    start = time.perf_counter()
    label_emb = model._label_embeddings(labels)
    preds = model.predict_documents(docs, label_emb, threshold=threshold, batch_size=batch_size)
    elapsed = time.perf_counter() - start
    facts = [
        (d.doc_id, row["head_id"], row["relation"], row["tail_id"]) for d, rows in zip(docs, preds) for row in rows
    ]
    result = evaluate_facts(docs, facts, train_facts)
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


@dataclass
class SpanScores:
    """Probabilities of every candidate span of one document against an entity-type set."""

    prepared: PreparedDocument
    spans: torch.Tensor  # [S, 2] word [start, end)
    probs: torch.Tensor  # [S, T]


@torch.no_grad()
def score_entity_spans(
    model: GLiDRE,
    docs: Sequence[Document],
    types: LabelEmbeddings,
    batch_size: int = 4,
    prepared: dict[str, Any] | None = None,
    cached_lower: dict[str, list[torch.Tensor]] | None = None,
    encoded: dict[str, Any] | None = None,
) -> list[SpanScores]:
    """Span probabilities for ``docs`` (given entities are ignored: they are the gold)."""
    return [
        SpanScores(p, sc.spans.cpu(), torch.sigmoid(sc.span_logits.float()).cpu())
        for p, sc in scored_batches(model, docs, None, types, batch_size, prepared, cached_lower, encoded)
    ]


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
    """Strict mention F1 at every threshold of ``grid``; the best one (dev data only)."""
    curve = []
    for thr in grid:
        res = entity_scores(gold, entity_predictions(scored, types, thr), type_name=model.config.entity_label)
        curve.append((thr, res["f1"]))
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
    batch_size: int = 4,
) -> dict[str, Any]:
    """Strict (span and type) mention-level entity recognition on ``docs``; ``entity_labels``
    None = the data's own types."""
    types_list = list(entity_labels) if entity_labels else data_entity_types(model, docs)
    start = time.perf_counter()
    types = model._entity_type_embeddings(types_list)
    thr = model._entity_threshold_vector(types, threshold)
    scored = score_entity_spans(model, docs, types, batch_size=batch_size)
    preds = entity_predictions(scored, types, thr)
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
    batch_size: int = 4,
) -> dict[str, Any]:
    """End to end from raw text: ``model.extract_documents`` on the texts alone, then strict
    entity F1 and end-to-end relation F1 (entity matching rule ``match``, with types when
    ``typed``) against the gold. Labels None = the data's own entity types / relation labels."""
    types_list = list(entity_labels) if entity_labels else data_entity_types(model, docs)
    rel_list = list(relation_labels_) if relation_labels_ else relation_labels(docs)
    start = time.perf_counter()
    results = model.extract_documents(
        docs, types_list, rel_list, entity_threshold=entity_threshold, threshold=threshold,
        batch_size=batch_size,
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
        "coreference": model.config.coreference,
    })
    return rel
