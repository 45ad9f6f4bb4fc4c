"""Where zero-shot relation extraction loses its F1: a diagnosis on dev data only.

For a model trained with pseudo-unseen labels held out (configs/experiments/zero_shot_calibrate.yaml
and zero_shot_generalise.yaml keep their trial models), score the 50-document dev hold-out with
only those labels as candidates and ask, for the (pair, label) probabilities:

* the best F1 any single threshold reaches (what the unseen-label calibration can get at most),
  and the same with decision rules that need no labelled example of the unseen labels: keep only
  each pair's top label; standardise each label's scores over all pairs; centre each pair's
  scores on its mean;
* how well the label is chosen *given* a related pair: top-1 accuracy among the pairs that hold
  a fact, against chance, and the ROC AUC within those pairs;
* the ROC AUC over all candidates (what the zero-shot protocol reports on test);
* *neighbour transfer*: an unseen label scored from the probabilities of the trained labels
  nearest to it in the label encoder's sentence-embedding space (softmax over the top ``k``
  cosine similarities at temperature ``tau``), alone or as a geometric mean with the label's own
  probability. Trained labels carry calibrated scores and co-occur with unseen ones (a "country"
  pair often also holds "located in the administrative territorial entity"), which the model's own
  score for a label it never saw cannot know. The grid is reported; the rule is chosen here, on
  dev, and only then applied to test (``GLiDREConfig.unseen_label_transfer``,
  :mod:`glidre_core.modeling.label_transfer`).

Only dev documents and pseudo-unseen labels are read: nothing here looks at the test types.

    python benchmarks/zero_shot_dev_diagnosis.py --model runs/experiments/zero_shot_calibrate/trial_*/checkpoint_000000/model \
        --experiment configs/experiments/zero_shot_calibrate.yaml --output-json benchmarks/results/zero_shot_dev_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glidre_core.experiments import load_experiment_config
from glidre_core.experiments.heldout import pseudo_unseen_dev
from glidre_core.modeling import GLiDRE
from glidre_core.modeling.label_transfer import neighbour_weights

logger = logging.getLogger("zero_shot_dev_diagnosis")


def rank_auc(scores: np.ndarray, hits: np.ndarray) -> float:
    """ROC AUC from average ranks (ties count half)."""
    pos, neg = int(hits.sum()), int((~hits).sum())
    if not pos or not neg:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return float((ranks[hits].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def best_f1(scores: np.ndarray, hits: np.ndarray, gold: int) -> dict[str, float]:
    """Best F1 over every cut of the score-sorted candidates (ties not split), and its cut."""
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order]
    k = np.arange(1, len(s) + 1)
    f1 = 2 * np.cumsum(h) / (k + gold)
    cut = np.append(s[1:] < s[:-1], True)  # a threshold can only cut between different scores
    f1 = np.where(cut, f1, -1.0)
    i = int(np.argmax(f1))
    return {"f1": float(f1[i]), "threshold": float(s[i]), "kept": int(k[i])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trial's saved model directory")
    parser.add_argument("--experiment", required=True, help="the experiment YAML the model was trained by")
    parser.add_argument("--output-json", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    exp = load_experiment_config(args.experiment)
    cfg, _, docs = pseudo_unseen_dev(exp)
    labels = list(cfg.unseen_calibration_labels)
    model = GLiDRE.from_pretrained(args.model)
    index = {lab: i for i, lab in enumerate(labels)}
    norm = model.config.normalize_label
    held = {norm(lab) for lab in cfg.exclude_labels}
    seen = [lab for lab in model.config.labels if norm(lab) not in held]
    probs, seen_probs, hits = [], [], []
    for sc in model.predictor(relation_labels=labels + seen, batch_size=4).score_relations(docs):
        ids = sc.prepared.entity_ids
        pair_of = {(ids[h], ids[t]): p for p, (h, t) in enumerate(zip(sc.heads.tolist(), sc.tails.tolist()))}
        y = np.zeros((sc.probs.shape[0], len(labels)), dtype=bool)
        for r in sc.prepared.doc.relations:
            p = pair_of.get((r.head, r.tail))
            if p is not None:
                y[p, index[r.label]] = True
        probs.append(sc.probs[:, : len(labels)].astype(np.float64))
        seen_probs.append(sc.probs[:, len(labels):].astype(np.float64))
        hits.append(y)
    P, Y, S = np.concatenate(probs), np.concatenate(hits), np.concatenate(seen_probs)
    gold = sum(len(d.relations) for d in docs)
    related = Y.any(1)
    top = P.argmax(1)
    top_mask = np.zeros_like(Y)
    top_mask[np.arange(len(P)), top] = True
    z = (P - P.mean(0)) / (P.std(0) + 1e-12)
    rules = {
        "one_threshold": best_f1(P.ravel(), Y.ravel(), gold),
        "top_label_per_pair": best_f1(np.where(top_mask, P, -1.0).ravel(), Y.ravel(), gold),
        "per_label_standardised": best_f1(z.ravel(), Y.ravel(), gold),
        "per_label_standardised_top_label": best_f1(np.where(top_mask, z, -1e9).ravel(), Y.ravel(), gold),
        "pair_centred": best_f1((P - P.mean(1, keepdims=True)).ravel(), Y.ravel(), gold),
    }
    with torch.no_grad():
        sim = model.label_sentence_vectors(labels) @ model.label_sentence_vectors(seen).T  # [U, S] cosines
    neighbours: dict[str, Any] = {}
    for k in (1, 3, 5, 10):
        for tau in (0.02, 0.05, 0.1):
            knn = S @ neighbour_weights(sim, k, tau).numpy().astype(np.float64).T  # [pairs, U]
            neighbours[f"neighbours_k{k}_tau{tau}"] = best_f1(knn.ravel(), Y.ravel(), gold)
            neighbours[f"geomean_k{k}_tau{tau}"] = best_f1(np.sqrt(knn * P).ravel(), Y.ravel(), gold)
    sim = sim.numpy()
    rules["neighbours"] = max(neighbours.values(), key=lambda r: r["f1"])
    nearest = {lab: [seen[j] for j in np.argsort(-sim[i])[:3]] for i, lab in enumerate(labels)}
    chance = float((Y[related].sum(1) / len(labels)).mean()) if related.any() else float("nan")
    result: dict[str, Any] = {
        "command": "python benchmarks/zero_shot_dev_diagnosis.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "model": args.model,
        "experiment": exp.name,
        "data": "the experiment's dev hold-out, pseudo-unseen labels only (no test document, no test type)",
        "labels": labels,
        "docs": len(docs),
        "gold_facts": gold,
        "scored_gold_facts": int(Y.sum()),
        "candidates": int(P.size),
        "pairs": int(len(P)),
        "related_pairs": int(related.sum()),
        "best_f1_by_rule": rules,
        "label_choice_given_a_related_pair": {
            "top1_accuracy": float(Y[related][np.arange(int(related.sum())), top[related]].mean()),
            "chance": chance,
            "auc_within_related_pairs": rank_auc(P[related].ravel(), Y[related].ravel()),
        },
        "auc_all_candidates": rank_auc(P.ravel(), Y.ravel()),
        "seen_labels": len(seen),
        "neighbour_rules": neighbours,
        "best_neighbour_rule": max(neighbours, key=lambda n: neighbours[n]["f1"]),
        "nearest_seen_labels": nearest,
        "stored_unseen_label_threshold": model.config.unseen_label_threshold,
        "seconds": time.perf_counter() - start,
    }
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(result, indent=1))
    logger.info("best F1 by rule: %s", {k: round(100 * v["f1"], 2) for k, v in rules.items()})
    logger.info("label choice given a related pair: %s; AUC all %.3f", result["label_choice_given_a_related_pair"],
                result["auc_all_candidates"])


if __name__ == "__main__":
    main()
