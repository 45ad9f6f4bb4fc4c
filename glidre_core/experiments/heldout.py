"""Held-out evaluation of a trial's dev-chosen model, through :mod:`glidre_core.evaluation`.

Two protocol pieces live here: label restriction (the zero-shot protocol scores only the unseen
relation types: their gold facts, and them as the only candidates) and the ranking AUC of gold
facts, which measures whether the model *orders* unseen-type pairs well even where no single
threshold makes F1 look good.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from glidre_core.documents import Document
from glidre_core.evaluation import evaluate_model, evaluation_labels
from glidre_core.inference import Predictor
from glidre_core.metrics import gold_facts, train_fact_names
from glidre_core.modeling import GLiDRE
from glidre_core.readers import read_documents, relation_labels

from glidre_core.experiments.config import EvaluateSection

if TYPE_CHECKING:
    from glidre_core.experiments.config import ExperimentConfig
    from glidre_core.training.config import TrainingConfig

logger = logging.getLogger(__name__)


def restrict_labels(docs: Sequence[Document], keep: set[str]) -> list[Document]:
    """``docs`` with only the relations whose label is in ``keep``."""
    return [d.model_copy(update={"relations": [r for r in d.relations if r.label in keep]}) for d in docs]


def ranking_auc(predictor: Predictor, docs: Sequence[Document]) -> dict[str, Any]:
    """ROC AUC of the gold facts among every (ordered entity pair, candidate label) of ``docs``:
    the probability that a random gold fact scores above a random non-fact (ties count half).

    Computed from average ranks over all candidates at once (Mann-Whitney U). Gold facts that the
    predictor never scores (an entity pair it does not form) count as ranked last."""
    labels = list(predictor.relations.labels)
    index = {lab: i for i, lab in enumerate(labels)}
    gold = {f for f in gold_facts(docs) if f[2] in index}
    by_doc: dict[str, list[tuple[str, str, str]]] = {}
    for doc_id, h, lab, t in gold:
        by_doc.setdefault(doc_id, []).append((h, lab, t))
    scores, hits = [], []
    seen = 0
    for sc in predictor.score_relations(docs):
        ids, doc_id = sc.prepared.entity_ids, sc.prepared.doc.doc_id
        mask = np.zeros(sc.probs.shape, dtype=bool)
        pair_of = {(ids[h], ids[t]): p for p, (h, t) in enumerate(zip(sc.heads.tolist(), sc.tails.tolist()))}
        for h, lab, t in by_doc.get(doc_id, ()):
            p = pair_of.get((h, t))
            if p is not None:
                mask[p, index[lab]] = True
        seen += int(mask.sum())
        scores.append(sc.probs.reshape(-1).astype(np.float64))
        hits.append(mask.reshape(-1))
    s = np.concatenate(scores) if scores else np.zeros(0)
    y = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    unscored = len(gold) - seen
    if unscored:
        s = np.concatenate([s, np.full(unscored, -1.0)])
        y = np.concatenate([y, np.ones(unscored, dtype=bool)])
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return {"auc": float("nan"), "positives": pos, "negatives": neg, "unscored_positives": unscored}
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = average_rank[inverse]
    auc = (ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg)
    return {"auc": float(auc), "positives": pos, "negatives": neg, "unscored_positives": unscored}


def evaluate_held_out(
    model: GLiDRE, section: EvaluateSection, train_docs: Sequence[Document]
) -> dict[str, Any]:
    """Official F1 / Ign F1 (and the ranking AUC when asked) of ``model`` on the section's data,
    at the model's dev-chosen threshold."""
    docs = read_documents(section.data.path, section.data.format, limit=section.data.limit)
    if section.restrict_labels:
        keep = list(dict.fromkeys(section.restrict_labels))
        docs = restrict_labels(docs, set(keep))
        labels = keep
    elif section.labels == "schema":
        labels = evaluation_labels(docs, section.data.format)
    elif section.labels == "data":
        labels = relation_labels(docs)
    else:
        labels = list(section.labels)
    facts = train_fact_names(list(train_docs)) if section.ign_f1 else None
    result = evaluate_model(model, docs, labels=labels, train_facts=facts, batch_size=section.batch_size)
    result["candidate_labels"] = labels if len(labels) <= 100 else len(labels)
    result["gold_facts"] = sum(len(d.relations) for d in docs)
    if section.ranking_auc:
        predictor = model.predictor(relation_labels=labels, batch_size=section.batch_size)
        result["ranking"] = ranking_auc(predictor, docs)
        result["auc"] = result["ranking"]["auc"]
    return result


def pseudo_unseen_dev(exp: "ExperimentConfig") -> tuple["TrainingConfig", list[Document], list[Document]]:
    """``(training config, training documents, dev documents)`` of ``exp``'s first trial, the
    dev hold-out with only its pseudo-unseen facts (``unseen_calibration_labels``): what every
    zero-shot rule is chosen on.

    Why the first trial: the split, the held-out labels and the hold-out seed are the same in
    every trial of a zero-shot experiment, so any trial's config names the same documents."""
    from pathlib import Path

    from glidre_core.experiments.config import build_training_config, expand_trials, load_base
    from glidre_core.training.calibration import calibration_documents
    from glidre_core.training.trainer import split_train_dev

    cfg = build_training_config(load_base(exp), exp, expand_trials(exp)[0], Path.cwd(), "unused")
    if not cfg.unseen_calibration_labels:
        raise ValueError(f"experiment {exp.name!r} holds out no pseudo-unseen labels (unseen_calibration_labels)")
    train, dev = split_train_dev(cfg)
    return cfg, train, calibration_documents(cfg, [d.doc_id for d in dev])
