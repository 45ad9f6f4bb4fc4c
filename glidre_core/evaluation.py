"""Scoring a model on labelled documents: predictions -> official metrics (+ throughput).

Every function here predicts through the public inference layer
(:class:`glidre_core.inference.Predictor`); threshold sweeps are vectorised over all candidates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from glidre_core.documents import Document, Entity, Mention
from glidre_core.inference import Predictor, SpanScores, mask_indices
from glidre_core.joint_metrics import end_to_end_relation_scores, entity_scores, mention_units, snap_to_tokens, type_key
from glidre_core.metrics import Fact, evaluate_facts, gold_facts, sweep_scores, ThresholdSweep, train_fact_names
from glidre_core.modeling import GLiDRE, LabelEmbeddings
from glidre_core.modeling.entities import decode_document_spans
from glidre_core.preparation import PreparedDocument
from glidre_core.readers import load_rel_info, relation_labels

logger = logging.getLogger(__name__)

SpanUnit = Literal["chars", "tokens"]
"""How predicted mentions are compared with gold ones: character-exact, or over the corpus's
whitespace-delimited tokens (:func:`glidre_core.joint_metrics.snap_to_tokens`)."""


@dataclass
class RelationCandidates:
    """Every (pair, label) candidate of some documents scored above a floor, as arrays.

    Why arrays and not one ``(fact, probability)`` tuple per candidate: with a pretraining
    vocabulary of thousands of labels nearly every (pair, label) of a dev set is a candidate
    early in training (150 million for 50 documents and 7,952 labels), and a Python tuple each
    needed more memory than the machine had. Here a candidate costs 13 bytes, and facts are
    built only for the candidates a threshold keeps (:meth:`facts_above`)."""

    labels: list[str]
    doc_ids: list[str]
    entity_ids: list[list[str]]
    heads: list[np.ndarray]  # per document: [P] head entity index of each ordered pair
    tails: list[np.ndarray]
    pairs: list[np.ndarray]  # per document: [C] pair index of each candidate (int32)
    rels: list[np.ndarray]  # per document: [C] label index (int32)
    scores: list[np.ndarray]  # per document: [C] probability (float32)

    def __len__(self) -> int:
        return sum(len(x) for x in self.scores)

    def all_scores(self) -> np.ndarray:
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)

    def hits(self, gold: set[Fact], spell: Callable[[str], str] | None = None) -> np.ndarray:
        """Whether each candidate (in :meth:`all_scores` order) is a fact of ``gold``, its label
        spelled by ``spell`` first (None: as is)."""
        spelled = [spell(lab) if spell else lab for lab in self.labels]
        by_spelling: dict[str, list[int]] = {}
        for r, lab in enumerate(spelled):
            by_spelling.setdefault(lab, []).append(r)
        by_doc: dict[str, list[tuple[str, str, str]]] = {}
        for d, h, lab, t in gold:
            by_doc.setdefault(d, []).append((h, lab, t))
        out = []
        for k, doc_id in enumerate(self.doc_ids):
            found = np.zeros(len(self.scores[k]), dtype=bool)
            facts = by_doc.get(doc_id)
            if facts and len(found):
                index = {eid: i for i, eid in enumerate(self.entity_ids[k])}
                pair_of = {(int(h), int(t)): p for p, (h, t) in enumerate(zip(self.heads[k], self.tails[k]))}
                n_labels = len(self.labels)
                wanted = [pair_of[(index[h], index[t])] * n_labels + r
                          for h, lab, t in facts if h in index and t in index and (index[h], index[t]) in pair_of
                          for r in by_spelling.get(lab, ())]
                if wanted:
                    flat = self.pairs[k].astype(np.int64) * n_labels + self.rels[k]
                    found = np.isin(flat, np.asarray(wanted, dtype=np.int64))
            out.append(found)
        return np.concatenate(out) if out else np.zeros(0, dtype=bool)

    def facts_above(self, thresholds: np.ndarray, spell: Callable[[str], str] | None = None) -> list[Fact]:
        """The facts whose probability is above their label's threshold (``thresholds[r]``,
        float32 as inference compares), labels spelled by ``spell``."""
        spelled = [spell(lab) if spell else lab for lab in self.labels]
        thr = np.asarray(thresholds, dtype=np.float32)
        out: list[Fact] = []
        for k, doc_id in enumerate(self.doc_ids):
            keep = self.scores[k] > thr[self.rels[k]]
            ids, heads, tails = self.entity_ids[k], self.heads[k], self.tails[k]
            for p, r in zip(self.pairs[k][keep].tolist(), self.rels[k][keep].tolist()):
                out.append((doc_id, ids[heads[p]], spelled[r], ids[tails[p]]))
        return out


def relation_candidates(
    predictor: Predictor, docs: Sequence[Document | PreparedDocument], floor: float = 0.05
) -> RelationCandidates:
    """Every (pair, label) candidate with probability above ``floor``: the input of a threshold
    sweep. One pass of the predictor; the selection is numpy over all pairs at once."""
    out = RelationCandidates(list(predictor.relations.labels), [], [], [], [], [], [], [])
    for sc in predictor.score_relations(docs):
        pairs, rels = mask_indices(sc.probs > floor)
        out.doc_ids.append(sc.prepared.doc.doc_id)
        out.entity_ids.append(list(sc.prepared.entity_ids))
        out.heads.append(sc.heads)
        out.tails.append(sc.tails)
        out.pairs.append(pairs.astype(np.int32))
        out.rels.append(rels.astype(np.int32))
        out.scores.append(sc.probs[pairs, rels].astype(np.float32))
    return out


def dev_sweep(
    model: GLiDRE, docs: Sequence[Document], labels: Sequence[str] | LabelEmbeddings | None = None,
    floor: float = 0.05, **kw: Any
) -> ThresholdSweep:
    """Threshold sweep on dev documents (the only place a decision threshold is chosen);
    ``labels`` None = the model's training labels. Candidates at or below ``floor`` are never
    kept (labels the model never trained on need a low one: their scores sit far below 0.05)."""
    predictor = model.predictor(relation_labels=labels, **kw)
    cands = relation_candidates(predictor, docs, floor)
    gold = gold_facts(docs)
    return sweep_scores(cands.all_scores(), cands.hits(gold), len(gold), floor)


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
    predictor = model.predictor(relation_labels=labels, threshold=threshold, batch_size=batch_size)
    preds = predictor.predict(docs)
    elapsed = time.perf_counter() - start
    result = evaluate_facts(docs, prediction_facts(docs, preds), train_facts)
    result.update({
        "docs": len(docs),
        "seconds": elapsed,
        "docs_per_second": len(docs) / elapsed if elapsed else 0.0,
        "threshold": model.config.threshold if threshold is None else threshold,
        "unseen_label_threshold": model.config.unseen_label_threshold if threshold is None else None,
        "labels": len(labels),
    })
    if predictor.prototype_labels:  # glidre adapt's labels: scored against their prototypes, own threshold
        result["prototype_labels"] = predictor.prototype_labels
    return result


# -- dev evaluation: checkpoint selection in training and the final evaluation of the best one ----
#: candidates at or below this probability are never kept by a dev threshold sweep
DEV_FLOOR = 0.05


def dev_predictor(model: GLiDRE, **kw: Any) -> Predictor:
    """The predictor of every dev evaluation of a training run: the trainer's at each evaluation
    point (:meth:`glidre_core.training.Trainer.dev_evaluation`) and the final evaluation of the
    best checkpoint (:func:`glidre_core.ray_train.finalize`). ``kw`` are other Predictor options
    (batch size, encoder cache, entity types); the relation candidates are not an option.

    The candidate relation labels are the model's own label set, ``model.config.labels``: the
    labels of the run's training and dev corpora together (normalised when pretraining), saved
    with every checkpoint, and the set the model predicts with when it is given no labels. Why
    this set and not the labels the dev documents happen to use (the final evaluation's choice
    until this was unified):

    * it does not depend on the dev answers. Candidates restricted to the labels of the dev
      gold facts remove every other type as a possible false positive using those answers: on a
      distilled corpus with a large free-text vocabulary a small dev hold-out uses a few of its
      labels, and the dev F1 measures an easier task than the one the model is trained and used
      for (benchmarks/llm_loop.sh's pretraining: the dev documents use 2 of the 4 labels, and
      one checkpoint at one threshold scored F1 0.052 on 4 candidates and 0.109 on those 2);
    * the dev threshold is chosen for it: the same scores with fewer candidates would call for
      another threshold, so a threshold chosen on one set and reported on another is neither;
    * it is one set for every evaluation point and for the final evaluation, so the number that
      chose a checkpoint is the number reported for it.

    A run with several corpora (``extra_train``) scores every dev document with all corpora's
    labels, as the trained model does by default. A held-out (test) evaluation is another
    matter: it scores the dataset's schema (:func:`evaluation_labels`, :func:`evaluate_model`).
    """
    if "relation_labels" in kw:
        raise TypeError("dev_predictor chooses the relation candidates itself (model.config.labels)")
    if not model.config.labels:
        raise ValueError("the model stores no relation labels: nothing to evaluate on dev")
    return model.predictor(relation_labels=list(model.config.labels), **kw)


def normalized_relations(docs: Sequence[Document], normalize: Callable[[str], str]) -> list[Document]:
    """``docs`` with every relation label spelled as ``normalize`` spells it (a document whose
    labels are already spelled so is returned as it is)."""
    out = []
    for d in docs:
        if any(normalize(r.label) != r.label for r in d.relations):
            d = d.model_copy(update={"relations": [r.model_copy(update={"label": normalize(r.label)}) for r in d.relations]})
        out.append(d)
    return out


def dev_train_facts(model: GLiDRE, train_docs: Sequence[Document]) -> set[tuple[str, str, str]]:
    """The training facts Ign F1 discounts, labels spelled as :func:`evaluate_dev` compares them."""
    return train_fact_names(normalized_relations(train_docs, model.config.normalize_label))


def evaluate_dev(
    predictor: Predictor,
    docs: Sequence[Document],
    *,
    prepared: Sequence[PreparedDocument] | None = None,
    train_facts: set[tuple[str, str, str]] | None = None,
    threshold: float | Literal["sweep"] | None = None,
) -> dict[str, Any]:
    """Relation P/R/F1, Ign F1 and the threshold sweep of ``docs`` (dev data) under ``predictor``
    (:func:`dev_predictor`): the one scoring behind the dev F1 the trainer records for each
    checkpoint and the final evaluation of the best one, so the two agree by construction.

    ``threshold``: ``"sweep"`` = chosen on these documents (the F1-best cut of the sweep, the
    threshold the trainer saves with a checkpoint); None = the predictor's (the thresholds
    stored with the model: the final evaluation of a saved checkpoint); or a float. Either way
    the metrics are those of the facts scored above it, compared as the predictor compares them
    (float32), so a checkpoint scored with ``"sweep"`` while training and the same checkpoint
    reloaded and scored with None give the same F1. ``f1`` differs from the sweep's ``sweep_f1``
    only where the chosen threshold is clipped to the sweep's range or rounds onto a score.

    Labels are compared as the model spells them (``config.normalize_label``, applied to the
    gold facts and to the predictions): a pretraining run normalises its label set
    (``PLAYS_FOR`` and ``plays for`` are one candidate), and its gold facts must be spelled the
    same way to be found. ``train_facts`` (for Ign F1) come from :func:`dev_train_facts`.
    ``prepared``: ``docs`` already prepared (the trainer's cache), scored instead of ``docs``.
    """
    labels = list(predictor.relations.labels)
    if labels != list(predictor.model.config.labels):
        raise ValueError("a dev evaluation scores the model's own label set: build its predictor with dev_predictor")
    norm = predictor.model.config.normalize_label
    gold_docs = normalized_relations(docs, norm)
    start = time.perf_counter()
    if threshold is None:
        per_label = dict(zip(labels, predictor.thresholds.tolist()))
    elif threshold != "sweep":
        per_label = dict.fromkeys(labels, float(np.float32(threshold)))
    floor = DEV_FLOOR if threshold == "sweep" else min(DEV_FLOOR, *per_label.values())
    cands = relation_candidates(predictor, prepared if prepared is not None else docs, floor)
    elapsed = time.perf_counter() - start
    gold = gold_facts(gold_docs)
    sweep = sweep_scores(cands.all_scores(), cands.hits(gold, norm), len(gold), DEV_FLOOR)
    if threshold == "sweep":
        per_label = dict.fromkeys(labels, float(np.float32(sweep.best_threshold)))
    # scores are float32 values: comparing them with float32 thresholds is what inference does
    kept = cands.facts_above(np.array([per_label[lab] for lab in labels], dtype=np.float32), norm)
    result = evaluate_facts(gold_docs, kept, train_facts)
    used, stored = set(per_label.values()), predictor.model.config.threshold
    if threshold == "sweep":
        shown: Any = sweep.best_threshold
    elif threshold is not None:
        shown = float(threshold)
    elif len(used) == 1:  # the stored threshold as saved, not its float32 rounding
        shown = stored if used == {float(np.float32(stored))} else used.pop()
    else:
        shown = per_label
    result.update({
        "docs": len(docs),
        "seconds": elapsed,
        "docs_per_second": len(docs) / elapsed if elapsed else 0.0,
        "threshold": shown,
        "labels": len(labels),
        "sweep_f1": sweep.best_f1,
        "sweep_threshold": sweep.best_threshold,
        "curve": sweep.curve,
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
    spans: SpanUnit = "chars",
) -> dict[str, Any]:
    """Strict (span and type) mention-level entity recognition on ``docs``; ``entity_labels``
    None = the data's own types; ``spans="tokens"`` compares over the corpus tokens
    (:func:`glidre_core.joint_metrics.snap_to_tokens`)."""
    types_list = list(entity_labels) if entity_labels else data_entity_types(model, docs)
    start = time.perf_counter()
    predictor = model.predictor(entity_labels=types_list, entity_threshold=threshold, batch_size=batch_size)
    scored = predictor.score_spans(docs)
    preds = entity_predictions(scored, predictor.entity_types, predictor.entity_thresholds)
    elapsed = time.perf_counter() - start
    result = entity_scores(docs, snap_to_tokens(preds) if spans == "tokens" else preds, type_name=model.config.entity_label)
    result.update({
        "task": "ner", "docs": len(docs), "seconds": elapsed,
        "docs_per_second": len(docs) / elapsed if elapsed else 0.0,
        "entity_threshold": model.config.entity_threshold if threshold is None else threshold,
        "entity_labels": types_list, "spans": spans,
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
    coreference: str | None = None,
    spans: SpanUnit = "chars",
) -> dict[str, Any]:
    """End to end from raw text: ``model.extract_documents`` on the texts alone, then strict
    entity F1 and end-to-end relation F1 (entity matching rule ``match``, with types when
    ``typed``) against the gold. Labels None = the data's own entity types / relation labels;
    ``coreference`` None = the model's own mode; ``spans="tokens"`` compares mentions over the
    corpus tokens (:func:`glidre_core.joint_metrics.snap_to_tokens`)."""
    types_list = list(entity_labels) if entity_labels else data_entity_types(model, docs)
    rel_list = list(relation_labels_) if relation_labels_ else relation_labels(docs)
    start = time.perf_counter()
    results = model.extract_documents(
        docs, types_list, rel_list, entity_threshold=entity_threshold, threshold=threshold,
        batch_size=batch_size, entity_recognizer=entity_recognizer, coreference=coreference,
    )
    elapsed = time.perf_counter() - start
    preds = [r.document for r in results]
    if spans == "tokens":
        preds = snap_to_tokens(preds)
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
        "coreference": coreference or model.config.coreference, "entity_recognizer": entity_recognizer,
        "spans": spans,
    })
    return rel
