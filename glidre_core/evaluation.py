"""Scoring a model on labelled documents: predictions -> official metrics (+ throughput)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from glidre_core.documents import Document
from glidre_core.metrics import Fact, evaluate_facts, gold_facts, sweep_threshold, ThresholdSweep
from glidre_core.modeling import GLiDRE, LabelEmbeddings
from glidre_core.readers import relation_labels

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
) -> list[tuple[Fact, float]]:
    """Every (fact, probability) with probability above ``floor``."""
    was = model.training
    model.eval()
    out: list[tuple[Fact, float]] = []
    try:
        for s in range(0, len(docs), batch_size):
            batch = docs[s : s + batch_size]
            preps = [prepared[d.doc_id] if prepared else model.prepare(d) for d in batch]
            cache = [cached_lower[d.doc_id] for d in batch] if cached_lower else None
            for p, sc in zip(preps, model.score_documents(preps, labels, cache)):
                probs = sc.probabilities()
                idx = (probs > floor).nonzero().tolist()
                for pi, ri in idx:
                    h = p.entity_ids[int(sc.heads[pi])]
                    t = p.entity_ids[int(sc.tails[pi])]
                    out.append(((p.doc.doc_id, h, labels.labels[ri], t), float(probs[pi, ri])))
    finally:
        model.train(was)
    return out


def dev_sweep(model: GLiDRE, docs: Sequence[Document], labels: LabelEmbeddings, **kw) -> ThresholdSweep:
    """Threshold sweep on dev documents (the only place a decision threshold is chosen)."""
    return sweep_threshold(score_candidates(model, docs, labels, **kw), gold_facts(docs))


def evaluate_model(
    model: GLiDRE,
    docs: list[Document],
    labels: Sequence[str] | None = None,
    train_facts: set[tuple[str, str, str]] | None = None,
    threshold: float | None = None,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Predict on ``docs`` with the stored (or given) threshold and compute all metrics."""
    labels = list(labels) if labels else (model.config.labels or relation_labels(docs))
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
