"""Zero-shot without training signal: does the raw sentence encoder find unseen-type facts? (dev only)

The zero-shot diagnosis (``zero_shot_dev_diagnosis.py``) found that a model trained without a type
cannot tell the pairs that hold it from other related pairs. This asks whether the *untrained*
sentence-embedding space can, with no GLiDRE head at all: for every ordered entity pair with
mentions in one sentence (:func:`glidre_core.fewshot.candidates.mention_geometry`, closest
mentions), score each pseudo-unseen label by the cosine between the label string's sentence
embedding and

* ``sent``: the embedding of the pair's sentence, or ``span``: of the text from the first
  mention to the second (pair-specific);
* ``*_label``: the label string alone; ``*_hyp``: the hypothesis "HEAD LABEL TAIL" (an
  entailment-style template); ``*_hyp_minus_bare``: that minus the cosine with "HEAD TAIL", so
  the entity names cancel;

each raw, centred per pair (``_paircentred``) and standardised per label (``_labelz``). Reported
per rule: the best F1 any threshold reaches over *all* the hold-out's pseudo-unseen facts
(cross-sentence facts count as misses), the ROC AUC over the same-sentence candidates, the top-1
label accuracy given a related pair, and the best F1 when only pairs at most 1/2/4 words apart are
kept. The encoder is the default model's frozen label encoder (MiniLM, mean pooling: exactly the
space GLiDRE's label embeddings start from), so no trained relation type is involved.

Only dev documents and pseudo-unseen labels are read (as ``zero_shot_dev_diagnosis.py``):

    python benchmarks/zero_shot_evidence_dev.py --experiment configs/experiments/zero_shot_calibrate.yaml \
        --output-json benchmarks/results/zero_shot_evidence_dev.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
for _path in (BENCHMARKS.parent, BENCHMARKS):
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

from zero_shot_dev_diagnosis import best_f1, rank_auc  # noqa: E402
from zero_shot_rules import sentence_vectors  # noqa: E402
from glidre_core.experiments import load_experiment_config  # noqa: E402
from glidre_core.experiments.heldout import pseudo_unseen_dev  # noqa: E402
from glidre_core.fewshot.candidates import mention_geometry, mention_sentences  # noqa: E402
from glidre_core.modeling import GLiDRE  # noqa: E402

logger = logging.getLogger("zero_shot_evidence_dev")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="a zero-shot experiment YAML with unseen_calibration_labels")
    parser.add_argument("--model", default="default", help="whose (frozen) label encoder embeds the texts")
    parser.add_argument("--output-json", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg, _, docs = pseudo_unseen_dev(load_experiment_config(args.experiment))
    labels = list(cfg.unseen_calibration_labels)
    model = GLiDRE.from_pretrained(args.model)
    model.label_encoder.eval()
    rows: list[tuple[str, str, str, str, float]] = []  # (sentence, span, head mention, tail mention, gap)
    Y: list[list[bool]] | np.ndarray = []
    all_pairs = 0
    gold = 0
    for d in docs:
        n = len(d.entities)
        all_pairs += n * (n - 1)
        gold += len(d.relations)
        g = mention_geometry(d)
        sents = mention_sentences(d)
        idx = {e.id: k for k, e in enumerate(d.entities)}
        facts = {(idx[r.head], idx[r.tail], r.label) for r in d.relations}
        for i in range(n):
            for j in range(n):
                if i == j or not np.isfinite(g.gaps[i, j]):
                    continue
                ka, kb = g.closest[i, j]
                mh, mt = d.entities[i].mentions[ka], d.entities[j].mentions[kb]
                s = sents[i][ka]
                ss, se = d.sentences[s] if d.sentences else (min(mh.start, mt.start), max(mh.end, mt.end))
                lo, hi = min(mh.start, mt.start), max(mh.end, mt.end)
                rows.append((d.text[ss:se], d.text[lo:hi], d.text[mh.start:mh.end], d.text[mt.start:mt.end], g.gaps[i, j]))
                Y.append([(i, j, lab) in facts for lab in labels])
    Y = np.array(Y)
    logger.info("%d docs, %d ordered pairs, %d with a common sentence; %d gold facts, %d of them on those pairs",
                len(docs), all_pairs, len(rows), gold, int(Y.sum()))
    sent_texts = sorted({r[0] for r in rows})
    span_texts = sorted({r[1] for r in rows})
    hyp = sorted({f"{r[2]} {lab} {r[3]}" for r in rows for lab in labels} | {f"{r[2]} {r[3]}" for r in rows})
    logger.info("%d sentences, %d spans, %d hypotheses to embed", len(sent_texts), len(span_texts), len(hyp))
    E: dict[str, np.ndarray] = {}
    for group in (sent_texts, span_texts, labels, hyp):
        v = sentence_vectors(model, group)
        E.update(zip(group, v))
    logger.info("embedded in %.0f s", time.perf_counter() - t0)
    S = np.array([E[r[0]] for r in rows])  # [N, D] sentences
    P = np.array([E[r[1]] for r in rows])  # [N, D] first mention .. second mention
    Lv = np.array([E[lab] for lab in labels])
    H = np.array([[E[f"{r[2]} {lab} {r[3]}"] for lab in labels] for r in rows])  # [N, L, D]
    B = np.array([E[f"{r[2]} {r[3]}"] for r in rows])
    gap = np.array([r[4] for r in rows])
    scores = {
        "sent_label": S @ Lv.T,
        "span_label": P @ Lv.T,
        "sent_hyp": np.einsum("nd,nld->nl", S, H),
        "span_hyp": np.einsum("nd,nld->nl", P, H),
        "sent_hyp_minus_bare": np.einsum("nd,nld->nl", S, H) - (S * B).sum(1, keepdims=True),
        "span_hyp_minus_bare": np.einsum("nd,nld->nl", P, H) - (P * B).sum(1, keepdims=True),
    }
    res: dict[str, dict[str, Any]] = {}
    related = Y.any(1)
    for k, v in list(scores.items()):
        for name, x in ((k, v), (k + "_paircentred", v - v.mean(1, keepdims=True)),
                        (k + "_labelz", (v - v.mean(0)) / v.std(0))):
            top = x.argmax(1)
            r = best_f1(x.ravel(), Y.ravel(), gold)
            r["auc_same_sentence"] = rank_auc(x.ravel(), Y.ravel())
            r["top1_given_related"] = float(Y[related][np.arange(related.sum()), top[related]].mean())
            for gmax in (1, 2, 4):
                m = (gap <= gmax)[:, None]
                r[f"f1_gap{gmax}"] = best_f1(np.where(m, x, -9).ravel(), Y.ravel(), gold)["f1"]
            res[name] = r
            logger.info("%s: %s", name, {a: round(b, 4) if isinstance(b, float) else b for a, b in r.items()})
    best = max(res, key=lambda k: res[k]["f1"])
    result = {
        "command": "python benchmarks/zero_shot_evidence_dev.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "data": "the experiment's dev hold-out, pseudo-unseen labels only (no test document, no test type)",
        "labels": labels, "docs": len(docs), "ordered_pairs": all_pairs, "same_sentence_pairs": len(rows),
        "gold_facts": gold, "same_sentence_gold_facts": int(Y.sum()),
        "rules": res, "best_rule": best, "best_f1": res[best]["f1"],
        "seconds": time.perf_counter() - t0,
    }
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(result, indent=1))
    logger.info("best rule %s: F1 %.2f", best, 100 * res[best]["f1"])


if __name__ == "__main__":
    main()
