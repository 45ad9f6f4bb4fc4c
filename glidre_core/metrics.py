"""Official DocRED / Re-DocRED relation metrics, plus breakdowns and a threshold sweep.

Facts are ``(doc_id, head entity id, relation label, tail entity id)``. F1 is micro over facts.
Ign F1 follows the official script: a *correct* prediction whose (head mention name, tail mention
name, relation) appears among the facts of the training file (any mention-name pair of a
training triple) is removed from both the correct count and the prediction count; recall is
unchanged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from glidre_core.documents import Document, Entity

Fact = tuple[str, str, str, str]  # (doc_id, head_id, label, tail_id)


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "correct": correct, "predicted": predicted, "gold": gold}


def mention_names(doc: Document, ent: Entity) -> set[str]:
    return {m.name if m.name is not None else doc.text[m.start : m.end] for m in ent.mentions}


def train_fact_names(train_docs: Iterable[Document]) -> set[tuple[str, str, str]]:
    """All (head mention name, tail mention name, relation) of a training file's triples."""
    facts: set[tuple[str, str, str]] = set()
    for doc in train_docs:
        ents = {e.id: e for e in doc.entities}
        for r in doc.relations:
            for n1 in mention_names(doc, ents[r.head]):
                for n2 in mention_names(doc, ents[r.tail]):
                    facts.add((n1, n2, r.label))
    return facts


def gold_facts(docs: Iterable[Document]) -> set[Fact]:
    return {(d.doc_id, r.head, r.label, r.tail) for d in docs for r in d.relations if r.head != r.tail}


def is_intra_sentence(doc: Document, head: str, tail: str) -> bool | None:
    """True if some mention of head and some mention of tail share a sentence; None if unknown."""
    h, t = doc.entity(head), doc.entity(tail)
    hs = {m.sent_id for m in h.mentions}
    ts = {m.sent_id for m in t.mentions}
    if None in hs or None in ts:
        return None
    return bool(hs & ts)


def evaluate_facts(
    docs: list[Document],
    predictions: Iterable[Fact],
    train_facts: set[tuple[str, str, str]] | None = None,
    frequent_top_k: int = 10,
) -> dict[str, Any]:
    """F1, Ign F1, per-relation, intra/inter-sentence and frequent/long-tail breakdowns."""
    by_id = {d.doc_id: d for d in docs}
    gold = gold_facts(docs)
    preds = {p for p in predictions if p[0] in by_id}
    correct = preds & gold
    result: dict[str, Any] = _prf(len(correct), len(preds), len(gold))

    # Ign F1
    correct_in_train = 0
    if train_facts:
        for doc_id, h, r, t in correct:
            doc = by_id[doc_id]
            hn, tn = mention_names(doc, doc.entity(h)), mention_names(doc, doc.entity(t))
            if any((a, b, r) in train_facts for a in hn for b in tn):
                correct_in_train += 1
    ign_pred = len(preds) - correct_in_train
    ign_p = (len(correct) - correct_in_train) / ign_pred if ign_pred else 0.0
    rec = result["recall"]
    result["ign_precision"] = ign_p
    result["ign_f1"] = 2 * ign_p * rec / (ign_p + rec) if ign_p + rec else 0.0
    result["correct_in_train"] = correct_in_train

    # per relation
    per_rel: dict[str, dict[str, float]] = {}
    g_by, p_by, c_by = Counter(f[2] for f in gold), Counter(f[2] for f in preds), Counter(f[2] for f in correct)
    for rel in sorted(set(g_by) | set(p_by)):
        per_rel[rel] = _prf(c_by[rel], p_by[rel], g_by[rel])
    result["per_relation"] = per_rel

    # intra vs inter sentence (only where sentence ids are known)
    def split(facts: set[Fact]) -> dict[bool | None, set[Fact]]:
        out: dict[bool | None, set[Fact]] = defaultdict(set)
        for f in facts:
            out[is_intra_sentence(by_id[f[0]], f[1], f[3])].add(f)
        return out

    gs, ps = split(gold), split(preds)
    if None not in gs and None not in ps:
        for key, name in ((True, "intra"), (False, "inter")):
            result[name] = _prf(len(gs[key] & ps[key]), len(ps[key]), len(gs[key]))

    # frequent vs long-tail relations (by gold frequency in this evaluation set)
    frequent = {r for r, _ in g_by.most_common(frequent_top_k)}
    for name, keep in (("frequent", lambda r: r in frequent), ("long_tail", lambda r: r not in frequent)):
        gsub = {f for f in gold if keep(f[2])}
        psub = {f for f in preds if keep(f[2])}
        result[name] = _prf(len(gsub & psub), len(psub), len(gsub))
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(split, P, R, F1) rows of an :func:`evaluate_facts` result, for any table renderer."""
    rows = [
        ("all", result["precision"], result["recall"], result["f1"]),
        ("Ign", result["ign_precision"], result["recall"], result["ign_f1"]),
    ]
    for key in ("intra", "inter", "frequent", "long_tail"):
        if key in result:
            r = result[key]
            rows.append((key, r["precision"], r["recall"], r["f1"]))
    return rows


@dataclass
class ThresholdSweep:
    best_threshold: float
    best_f1: float
    curve: list[tuple[float, float]]  # (threshold, f1)


def sweep_threshold(
    scored: Iterable[tuple[Fact, float]], gold: set[Fact], floor: float = 0.05
) -> ThresholdSweep:
    """F1 for every cut of the score-sorted candidates (scores above ``floor``) and the best cut.

    The returned threshold is the midpoint between the last kept and the first dropped score,
    so ``score > threshold`` reproduces the best cut. ``curve`` samples F1 at 0.05 steps.
    """
    scored = list(scored)
    s_arr = np.fromiter((sc for _, sc in scored), dtype=np.float64, count=len(scored))
    hit = np.fromiter((f in gold for f, _ in scored), dtype=bool, count=len(scored))
    return sweep_scores(s_arr, hit, len(gold), floor)


def sweep_scores(scores: np.ndarray, hits: np.ndarray, n_gold: int, floor: float = 0.05) -> ThresholdSweep:
    """:func:`sweep_threshold` on arrays: candidate ``scores`` and whether each is a gold fact
    (``hits``), with ``n_gold`` gold facts in all. The form for large candidate sets (a
    pretraining vocabulary of thousands of labels), where a Python tuple per candidate would
    not fit in memory."""
    s_arr = np.asarray(scores, dtype=np.float64)
    hit = np.asarray(hits, dtype=bool)
    keep = s_arr > floor
    order = np.argsort(-s_arr[keep], kind="stable")
    scores, hits = s_arr[keep][order], hit[keep][order]
    # keeping the first k candidates (k = 1..n): F1 = 2 * hits / (k + gold)
    k = np.arange(1, len(scores) + 1)
    f1 = 2 * np.cumsum(hits) / np.maximum(k + n_gold, 1)
    # a cut between tied scores cannot be made by a threshold
    nxt = np.append(scores[1:], floor)
    reachable = nxt < scores
    best_f1, best_thr = 0.0, 0.5
    if reachable.any():
        cand = np.where(reachable, f1, -1.0)
        i = int(np.argmax(cand))  # the first (highest threshold) of the best cuts
        if cand[i] > 0:
            best_f1, best_thr = float(cand[i]), float((scores[i] + nxt[i]) / 2)
    grid = np.arange(5, 100, 5) / 100
    counts = (scores[None, :] > grid[:, None]).sum(1)
    cum = np.concatenate([[0], np.cumsum(hits)])
    curve_f1 = np.where(counts + n_gold > 0, 2 * cum[counts] / np.maximum(counts + n_gold, 1), 0.0)
    curve = [(float(g), float(f)) for g, f in zip(grid, curve_f1)]
    return ThresholdSweep(min(max(best_thr, min(0.01, floor)), 0.99), best_f1, curve)
