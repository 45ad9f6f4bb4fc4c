"""Where end-to-end relation F1 is lost: mentions, coreference, or the relation scorer (dev only).

Issue 11's end-to-end targets are far from the given-entity scores, and spaCy's entities gave the
relation scorer about twice the span head's end-to-end F1 on Re-DocRED with a *lower* mention
F1. This script runs the product's extraction path (``GLiDRE.extract_documents``) with four
entity sources on the same dev documents and scores each exactly as ``glidre evaluate --task
joint`` does:

* ``gold_entities``: the gold entities given (the relation scorer alone; the ceiling);
* ``gold_mentions_rules``: the gold mentions with their gold types, grouped by our coreference
  rules (what coreference costs; on CoNLL04, whose entities are single mentions and whose
  mentions are therefore not grouped, it equals ``gold_entities``);
* ``span_head``: the model's own span head, then the rules (the product's default path);
* ``spacy``: spaCy NER mapped onto the types, then the rules.

For each (keys as ``benchmarks/spacy_baseline.py`` writes them): strict mention F1 (``entity_f1``),
entity (cluster) F1 with the strict rule (same set of mention spans),
and end-to-end relation F1 with the strict and relaxed rules. Data: the 50 Re-DocRED dev
documents the default model's stages hold out (never trained on), and CoNLL04 dev. Test sets
are not read.

    python benchmarks/e2e_breakdown.py --model default --output-json benchmarks/results/e2e_breakdown.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONFIG = REPO / "configs" / "default_model_joint.yaml"
CONLL04_DEV = REPO.parent / "shared" / "data" / "conll04" / "conll04_dev.json"


class GoldMentions:
    """An entity recognizer (the duck type of :class:`glidre_core.spacy_ner.SpacyRecognizer`)
    that returns the gold mentions of each document, with their gold entity's type, ungrouped:
    the coreference rules then group them as they would the span head's."""

    def __init__(self, gold: Sequence[Any], types: Sequence[str], type_name: Any):
        self.gold = {d.doc_id: d for d in gold}
        self.types = list(types)
        self.type_name = type_name

    def entities(self, docs: Sequence[Any], coreference: str = "rules") -> list[Any]:
        from glidre_core.modeling.entities import group_mentions
        from glidre_core.modeling.spans import SpanPrediction
        from glidre_core.text import char_span_to_words, split_words

        out = []
        for doc in docs:
            words = split_words(doc.text)
            preds, seen = [], set()
            for ent in self.gold[doc.doc_id].entities:
                typ = self.type_name(ent.type) if ent.type else None
                if typ not in self.types:
                    continue
                for m in ent.mentions:
                    span = char_span_to_words(words, m.start, m.end)
                    if span not in seen:
                        seen.add(span)
                        preds.append(SpanPrediction(span[0], span[1], self.types.index(typ), 1.0))
            preds.sort(key=lambda p: (p.start, p.end))
            out.append(group_mentions(preds, words, self.types, coreference))
        return out


def cluster_f1(gold: Sequence[Any], pred: Sequence[Any]) -> dict[str, float]:
    """Entity F1: a predicted entity is right when its set of mention spans equals a gold one's."""
    tp = n_pred = n_gold = 0
    by_id = {d.doc_id: d for d in pred}
    for g in gold:
        gs = {frozenset((m.start, m.end) for m in e.mentions) for e in g.entities}
        p = by_id.get(g.doc_id)
        ps = {frozenset((m.start, m.end) for m in e.mentions) for e in (p.entities if p else [])}
        tp, n_pred, n_gold = tp + len(gs & ps), n_pred + len(ps), n_gold + len(gs)
    prec, rec = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-12),
            "n_pred": n_pred, "n_gold": n_gold}


def run_source(model, docs, types, relations, source: str, matches, coreference: str | None = None) -> dict[str, Any]:
    from spacy_baseline import score

    tn = model.config.entity_label
    t0 = time.perf_counter()
    if source == "gold_entities":
        from glidre_core.documents import Relation

        rows = model.predict_documents(docs, relations)
        preds = [d.model_copy(update={"relations": [Relation(head=r["head_id"], label=r["relation"], tail=r["tail_id"])
                                                    for r in rs]}) for d, rs in zip(docs, rows)]
    else:
        recognizer = {"span_head": "model", "spacy": "spacy",
                      "gold_mentions_rules": GoldMentions(docs, types, tn)}[source]
        preds = [r.document for r in model.extract_documents(docs, types, relations, entity_recognizer=recognizer,
                                                             coreference=coreference)]
    seconds = time.perf_counter() - t0
    # scored exactly as the spaCy baseline scores (strict mention F1 as entity_*, end to end per match)
    out: dict[str, Any] = {"seconds": seconds, **score(model, docs, preds, matches)}
    out["entity_cluster_f1"] = cluster_f1(docs, preds)["f1"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--sources", nargs="+", default=["gold_entities", "gold_mentions_rules", "span_head", "spacy"])
    p.add_argument("--output-json")
    args = p.parse_args()

    import yaml

    from glidre_core.evaluation import data_entity_types, evaluation_labels
    from glidre_core.model_loading import load_model
    from glidre_core.readers import read_documents
    from glidre_core.training.config import TrainingConfig
    from glidre_core.training.trainer import split_train_dev

    data = yaml.safe_load(CONFIG.read_text())
    data.pop("init_from", None)
    _, redocred_dev = split_train_dev(TrainingConfig(**data).model_copy(update={"extra_dev": []}))
    sets = {
        "redocred_dev50": (redocred_dev, "docred", [("strict", False), ("relaxed", False)], None),
        # mentions stay ungrouped on CoNLL04, as `glidre evaluate --task joint` scores it
        "conll04_dev": (read_documents(str(CONLL04_DEV), "conll04"), "conll04", [("strict", True)], "none"),
    }
    model = load_model(args.model)
    report: dict[str, Any] = {
        "model": args.model, "protocol": __doc__.split("\n\n")[1].strip(),
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "sets": {},
    }
    for name, (docs, fmt, matches, coreference) in sets.items():
        types = data_entity_types(model, docs)
        relations = evaluation_labels(docs, fmt)
        report["sets"][name] = {"docs": len(docs), "entity_types": types}
        for source in args.sources:
            res = run_source(model, docs, types, relations, source, matches, coreference)
            report["sets"][name][source] = res
            print(name, source, json.dumps({k: round(v, 4) for k, v in res.items() if isinstance(v, float)}), flush=True)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
