"""Coreference on the Re-DocRED dev documents the default model never trained on.

The default model trained on 450 of the 500 Re-DocRED dev documents; ``configs/default_model.yaml``
holds the other 50 out (its seeded split, ``split_train_dev``). This script runs the model's joint
path on those 50 and reports mention F1, end-to-end relation F1 (strict and relaxed), entity
cluster F1, and ``names_split_over_entities``: how often one document's predicted entities share
a normalised name (the "Gobstoppers became three entities" symptom).

    python benchmarks/coref_heldout.py --output-json benchmarks/results/coref_heldout.json

The "before" numbers of the README were measured with the same metrics on the library of commit
1b6e788 (the commit before the same-name rule): check that commit out elsewhere and run this file
with ``PYTHONPATH`` pointing at it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # after PYTHONPATH: another checkout's library wins


def name_of(text: str) -> str:
    try:
        from glidre_core.coreference import name_key
    except ImportError:  # the library before name_key existed (the "before" run)
        from glidre_core.coreference import _normalised_tokens

        return " ".join(_normalised_tokens(text))
    return name_key(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "default_model.yaml"))
    p.add_argument("--output-json")
    args = p.parse_args()

    import yaml

    from glidre_core.evaluation import data_entity_types, evaluation_labels
    from glidre_core.joint_metrics import end_to_end_relation_scores, entity_scores, match_entities
    from glidre_core.model_loading import load_model
    from glidre_core.training.config import TrainingConfig
    from glidre_core.training.trainer import split_train_dev

    cfg = TrainingConfig(**yaml.safe_load(open(args.config)))
    _, docs = split_train_dev(cfg)  # the held-out dev documents
    model = load_model("default")
    t0 = time.perf_counter()
    results = model.extract_documents(docs, data_entity_types(model, docs), evaluation_labels(docs, "docred"))
    preds = [r.document for r in results]
    tn = model.config.entity_label
    ner = entity_scores(docs, preds, type_name=tn)
    report = {"docs": len(docs), "seconds": time.perf_counter() - t0,
              "mention_strict_f1": ner["f1"], "mention_precision": ner["precision"], "mention_recall": ner["recall"]}
    for match in ("strict", "relaxed"):
        r = end_to_end_relation_scores(docs, preds, match=match, typed=False, type_name=tn,
                                       normalize_label=model.config.normalize_label)
        report[f"relation_{match}"] = {k: r[k] for k in ("precision", "recall", "f1")}
    n_pred, n_gold = sum(len(p.entities) for p in preds), sum(len(g.entities) for g in docs)
    for typed in (False, True):
        tp = sum(len({v for v in match_entities(g, p, "strict", typed, tn).values() if v}) for g, p in zip(docs, preds))
        prec, rec = tp / max(n_pred, 1), tp / max(n_gold, 1)
        report["entity_cluster_" + ("typed" if typed else "untyped") + "_f1"] = 2 * prec * rec / (prec + rec) if tp else 0.0
    split = 0
    for pred in preds:
        owner: dict[str, set[str]] = defaultdict(set)
        for e in pred.entities:
            for m in e.mentions:
                key = name_of(pred.text[m.start : m.end]).casefold()
                if key:
                    owner[key].add(e.id)
        split += sum(1 for ids in owner.values() if len(ids) > 1)
    report.update({"predicted_entities": n_pred, "names_split_over_entities": split})
    print(json.dumps(report, indent=1))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
