"""Decision rules for unseen relation labels that look at the trained labels too, chosen on dev.

Why: a zero-shot model ranks the gold facts of unseen types well (AUC about 0.9) but predicts them
with about 2% precision at a dev-chosen threshold. Most false positives could be pairs that hold a
*trained* relation, to which a new label string that sits near a trained one also gives a fair
score. A user who names new types still has the model's trained types, so they can compete:

* ``threshold``: predict unseen label ``u`` for pair ``p`` when ``P(u|p) >= tau`` (the calibrated
  protocol of ``configs/experiments/zero_shot_calibrate.yaml``);
* ``+ top1``: and ``u`` is the pair's best unseen label (a pair rarely holds two);
* ``+ compete m``: and ``P(u|p) >= m * max_s P(s|p)`` over the trained labels ``s``.

The opposite idea, added after ``compete`` failed: the trained labels as a *relatedness* signal.
In Re-DocRED dev (a data count, no model, ``benchmarks/unseen_pair_overlap.py``; trained types =
all but the 36 that ``zero_shot_calibrate.yaml`` holds out), 61% of the facts of the 18 unseen types sit on an ordered
entity pair that also holds a trained-type fact, against 5.3% of all ordered pairs; for the 18
pseudo-unseen types it is 23%. So a pair that holds a trained relation is 4 to 11 times likelier
to hold an unseen-type fact, and the model's trained labels can say which pairs those are:

* ``+ gate g``: and ``max_s P(s|p) >= g`` (the pair is related under a trained label);
* ``score = related``: rank by ``P(u|p) * max_s P(s|p)`` instead of ``P(u|p)``, one threshold.

With ``--evidence``, a third source, which needs no training at all
(``benchmarks/zero_shot_evidence_dev.py`` found that it chooses the label of a related dev pair
better than the model, 43% against 27.5%, but finds pairs worse): ``ev(u|p)``, the softmax over
the unseen labels (temperature ``t``) of the cosine between the frozen sentence encoder's embedding
of the text from one of the pair's closest same-sentence mentions to the other and that of the
label string; 0 for pairs without a common sentence. The model says whether a pair is related,
the words between its mentions say which unseen label:

* ``score = prob*ev``: ``P(u|p) * ev(u|p)``; ``score = related*ev``: ``max_s P(s|p) * ev(u|p)``
  (trained labels as relatedness); ``score = unseen*ev``: ``max_u' P(u'|p) * ev(u|p)``;
  each alone or with ``top1`` (on that score).

Every rule's ``tau`` and ``m`` are chosen on the dev hold-out's pseudo-unseen facts (labels that
training also held out), then applied once to Re-DocRED test restricted to the 18 unseen types.
No choice reads a test document or a test type.

    python benchmarks/zero_shot_rules.py --experiment configs/experiments/zero_shot_phrasings.yaml \\
        --model runs/experiments/zero_shot_phrasings/trial_*_00000/checkpoint_000000/model \\
        --output-json benchmarks/results/zero_shot_rules.json [--evidence]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glidre_core.documents import Document
from glidre_core.experiments import load_experiment_config
from glidre_core.experiments.heldout import pseudo_unseen_dev, restrict_labels
from glidre_core.fewshot.candidates import mention_geometry
from glidre_core.metrics import gold_facts
from glidre_core.modeling import GLiDRE
from glidre_core.readers import read_documents

logger = logging.getLogger("zero_shot_rules")

MARGINS = (None, 0.25, 0.5, 1.0, 2.0)
GATES = (0.05, 0.1, 0.2, 0.3, 0.5)
#: (top1, compete margin, relatedness gate, score) for every rule; the score is "prob" = P(u|p) or
#: "related" = P(u|p) * max_s P(s|p)
RULES = (
    [(top1, margin, None, "prob") for top1, margin in itertools.product((False, True), MARGINS)]
    + [(top1, None, gate, "prob") for top1, gate in itertools.product((False, True), GATES)]
    + [(top1, None, None, "related") for top1 in (False, True)]
)


#: softmax temperatures of the evidence score (``--evidence``)
EVIDENCE_TEMPERATURES = (0.02, 0.05, 0.1)
EVIDENCE_SCORES = ("prob*ev", "related*ev", "unseen*ev")


def sentence_vectors(model: GLiDRE, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Unit-length sentence embeddings of ``texts`` by the model's label encoder (mean pooling,
    up to 128 tokens). The label encoder is frozen in every zero-shot config, so this is the
    pretrained sentence-embedding space, untouched by the trained relation types."""
    encoder, tokenizer = model.label_encoder.model, model.label_encoder.tokenizer
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            states = encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


def pair_spans(doc: Document, entity_ids: Sequence[str], heads: np.ndarray, tails: np.ndarray) -> list[str | None]:
    """The text from one to the other of each pair's closest same-sentence mentions (None without a
    common sentence); ``heads``/``tails`` index ``entity_ids``."""
    geometry = mention_geometry(doc)
    index = {e.id: i for i, e in enumerate(doc.entities)}
    spans: list[str | None] = []
    for h, t in zip(heads.tolist(), tails.tolist()):
        i, j = index[entity_ids[h]], index[entity_ids[t]]
        if not np.isfinite(geometry.gaps[i, j]):
            spans.append(None)
            continue
        a, b = (doc.entities[i].mentions[geometry.closest[i, j, 0]], doc.entities[j].mentions[geometry.closest[i, j, 1]])
        spans.append(doc.text[min(a.start, b.start):max(a.end, b.end)])
    return spans


def candidates(model: GLiDRE, docs: Sequence[Document], unseen: Sequence[str], batch_size: int,
               evidence: bool = False) -> dict[str, np.ndarray]:
    """Every (pair, unseen label) candidate of ``docs``: its probability, its ratio to the pair's
    best trained label, whether it is the pair's best unseen label, and whether it is gold. With
    ``evidence``, also the cosine ``sim`` of the pair's mention-to-mention span with the label
    string (NaN without a common sentence) and the pair's best unseen probability."""
    seen = [lab for lab in model.config.labels if lab not in set(unseen)]
    labels = list(unseen) + seen
    u = len(unseen)
    gold = gold_facts(docs)
    predictor = model.predictor(relation_labels=labels, batch_size=batch_size)
    probs, related, top1, hit, spans, best_unseen = [], [], [], [], [], []
    for sc in predictor.score_relations(docs):
        if len(sc.heads) == 0:
            continue
        ids, doc_id = sc.prepared.entity_ids, sc.prepared.doc.doc_id
        pu, ps = sc.probs[:, :u], sc.probs[:, u:]
        if evidence:
            spans.extend(pair_spans(sc.prepared.doc, ids, sc.heads, sc.tails))
            best_unseen.append(np.broadcast_to(pu.max(1, keepdims=True), pu.shape).reshape(-1))
        best_seen = ps.max(1, keepdims=True) if ps.shape[1] else np.zeros((len(pu), 1), np.float32)
        probs.append(pu.reshape(-1))
        related.append(np.broadcast_to(best_seen, pu.shape).reshape(-1))
        top1.append((pu >= pu.max(1, keepdims=True)).reshape(-1))
        hit.append(np.array([(doc_id, ids[h], lab, ids[t]) in gold
                             for h, t in zip(sc.heads.tolist(), sc.tails.tolist()) for lab in unseen]))
    prob, rel = np.concatenate(probs), np.concatenate(related)
    out = {"prob": prob, "related": prob * rel, "best_seen": rel,
           "ratio": prob / np.maximum(rel, 1e-12), "top1": np.concatenate(top1),
           "hit": np.concatenate(hit), "gold": np.array(len({f for f in gold if f[2] in set(unseen)}))}
    if evidence:
        texts = sorted({x for x in spans if x is not None})
        vectors = dict(zip(texts, sentence_vectors(model, texts)))
        label_vectors = sentence_vectors(model, [model.config.normalize_label(lab) for lab in unseen])
        sim = np.full((len(spans), u), np.nan, np.float32)
        rows = [k for k, x in enumerate(spans) if x is not None]
        if rows:
            sim[rows] = np.stack([vectors[spans[k]] for k in rows]) @ label_vectors.T
        out["sim"] = sim.reshape(-1)
        out["best_unseen"] = np.concatenate(best_unseen)
        out["n_labels"] = np.array(u)
    return out


def add_evidence_scores(c: dict[str, np.ndarray], temperature: float) -> dict[str, np.ndarray]:
    """``c`` with the ``--evidence`` scores at softmax temperature ``temperature``: ``ev`` and the
    three products of :data:`EVIDENCE_SCORES`, plus ``top1:<score>`` masks (the pair's best unseen
    label by that score)."""
    u = int(c["n_labels"])
    sim = c["sim"].reshape(-1, u)
    z = np.where(np.isnan(sim), -np.inf, sim / temperature)
    z = z - np.where(np.isfinite(z.max(1, keepdims=True)), z.max(1, keepdims=True), 0.0)
    e = np.exp(z)
    ev = np.divide(e, e.sum(1, keepdims=True), out=np.zeros_like(e), where=e.sum(1, keepdims=True) > 0).reshape(-1)
    out = dict(c)
    out["prob*ev"] = c["prob"] * ev
    out["related*ev"] = c["best_seen"] * ev
    out["unseen*ev"] = c["best_unseen"] * ev
    for name in EVIDENCE_SCORES:
        m = out[name].reshape(-1, u)
        out[f"top1:{name}"] = ((m >= m.max(1, keepdims=True)) & (m > 0)).reshape(-1)
    return out


def keep_mask(c: dict[str, np.ndarray], top1: bool, margin: float | None, gate: float | None = None) -> np.ndarray:
    keep = np.ones(len(c["prob"]), dtype=bool)
    if top1:
        keep &= c["top1"]
    if margin is not None:
        keep &= c["ratio"] >= margin
    if gate is not None:
        keep &= c["best_seen"] >= gate
    return keep


def best_threshold(c: dict[str, np.ndarray], keep: np.ndarray, by: str = "prob") -> tuple[float, float]:
    """(tau, F1) maximising F1 over every threshold of score ``by``, among the kept candidates."""
    p, y = c[by][keep], c["hit"][keep]
    if not y.any():
        return 0.5, 0.0
    order = np.argsort(-p, kind="stable")
    s, tp = p[order], np.cumsum(y[order])
    n = np.arange(1, len(order) + 1)
    f1 = 2 * tp / (n + int(c["gold"]))
    f1 = np.where(np.append(s[1:] < s[:-1], True), f1, -1.0)  # a threshold cannot split tied scores
    i = int(f1.argmax())
    return float(s[i]), float(f1[i])


def score(c: dict[str, np.ndarray], keep: np.ndarray, tau: float, by: str = "prob") -> dict[str, float]:
    pred = keep & (c[by] >= tau)
    tp, n, g = int((pred & c["hit"]).sum()), int(pred.sum()), int(c["gold"])
    prec, rec = tp / n if n else 0.0, tp / g if g else 0.0
    return {"f1": 2 * prec * rec / (prec + rec) if tp else 0.0, "precision": prec, "recall": rec, "predicted": n, "tp": tp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--model", required=True, help="the trial's saved model directory")
    parser.add_argument("--output-json", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evidence", action="store_true",
                        help="also the rules that take the unseen label from the words between the mentions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    exp = load_experiment_config(args.experiment)
    cfg, _, dev_docs = pseudo_unseen_dev(exp)
    pseudo = list(dict.fromkeys(cfg.unseen_calibration_labels))
    unseen = list(dict.fromkeys(exp.evaluate.restrict_labels or []))
    if not unseen or not pseudo:
        raise ValueError("the experiment needs evaluate.restrict_labels and unseen_calibration_labels")
    test_docs = restrict_labels(read_documents(exp.evaluate.data.path, exp.evaluate.data.format), set(unseen))
    model = GLiDRE.from_pretrained(args.model)
    trained = set(model.config.labels)
    if trained & (set(unseen) | set(pseudo)):
        raise ValueError(f"the model trained on {sorted(trained & (set(unseen) | set(pseudo)))}: not a zero-shot model")
    dev_c = candidates(model, dev_docs, pseudo, cfg.batch_size, args.evidence)
    test_c = candidates(model, test_docs, unseen, cfg.batch_size, args.evidence)
    rows: list[dict[str, Any]] = []
    for top1, margin, gate, by in RULES:
        tau, dev_f1 = best_threshold(dev_c, keep_mask(dev_c, top1, margin, gate), by)
        test = score(test_c, keep_mask(test_c, top1, margin, gate), tau, by)
        rows.append({"top1": top1, "margin": margin, "gate": gate, "score": by, "tau": tau, "dev_f1": dev_f1,
                     **{f"test_{k}": v for k, v in test.items()}})
        logger.info("%s", rows[-1])
    if args.evidence:
        for temperature in EVIDENCE_TEMPERATURES:
            dev_e, test_e = add_evidence_scores(dev_c, temperature), add_evidence_scores(test_c, temperature)
            for by, top1 in itertools.product(EVIDENCE_SCORES, (False, True)):
                dev_keep = dev_e[f"top1:{by}"] if top1 else np.ones(len(dev_e["prob"]), bool)
                test_keep = test_e[f"top1:{by}"] if top1 else np.ones(len(test_e["prob"]), bool)
                tau, dev_f1 = best_threshold(dev_e, dev_keep, by)
                test = score(test_e, test_keep, tau, by)
                rows.append({"top1": top1, "margin": None, "gate": None, "score": by, "temperature": temperature,
                             "tau": tau, "dev_f1": dev_f1, **{f"test_{k}": v for k, v in test.items()}})
                logger.info("%s", rows[-1])
    chosen = max(rows, key=lambda r: r["dev_f1"])
    out = {
        "command": f"python benchmarks/zero_shot_rules.py --experiment {args.experiment} --model {args.model} "
                   f"--output-json {args.output_json}" + (" --evidence" if args.evidence else ""),
        "model": args.model, "experiment": exp.name,
        "protocol": "tau and the rule chosen on the dev hold-out's pseudo-unseen facts; test = Re-DocRED test, "
                    "the 18 unseen types, trained labels scored alongside as competitors",
        "dev": {"docs": len(dev_docs), "facts": int(dev_c["gold"]), "labels": pseudo},
        "test": {"docs": len(test_docs), "facts": int(test_c["gold"]), "labels": unseen},
        "rules": rows, "chosen_on_dev": chosen, "seconds": time.perf_counter() - start,
    }
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(out, indent=1))
    logger.info("chosen on dev: %s", chosen)


if __name__ == "__main__":
    main()
