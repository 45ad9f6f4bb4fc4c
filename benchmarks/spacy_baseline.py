"""spaCy NER + GLiDRE's relation scorer against GLiDRE's own joint path, on the same documents.

Protocol: the one free choice of the spaCy path (``fold_into_misc``: OntoNotes classes the task
has no type for are dropped, or sent to its miscellaneous/other type) is chosen per dataset on the
dev split by end-to-end relation F1, then both systems are reported once on test. The model's own
settings (thresholds) are the ones stored with it (chosen on dev when it was trained). Scoring is
exactly ``glidre evaluate --task joint`` (strict mention F1; end-to-end relation F1, typed on
CoNLL04 with its mentions ungrouped, untyped strict and relaxed on Re-DocRED).

    python benchmarks/spacy_baseline.py --model default --output-json benchmarks/results/spacy_baseline.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
SETS = {
    "conll04": {"dev": DATA / "conll04" / "conll04_dev.json", "test": DATA / "conll04" / "conll04_test.json",
                "format": "conll04", "matches": [("strict", True)], "coreference": "none"},
    "redocred": {"dev": DATA / "redocred" / "dev_revised.json", "test": DATA / "redocred" / "test_revised.json",
                 "format": "docred", "matches": [("strict", False), ("relaxed", False)], "coreference": None},
}


def score(model, gold, pred, matches) -> dict:
    from glidre_core.joint_metrics import end_to_end_relation_scores, entity_scores

    tn = model.config.entity_label
    ner = entity_scores(gold, pred, type_name=tn)
    out = {"entity_f1": ner["f1"], "entity_p": ner["precision"], "entity_r": ner["recall"]}
    for match, typed in matches:
        rel = end_to_end_relation_scores(gold, pred, match=match, typed=typed, type_name=tn,
                                         normalize_label=model.config.normalize_label)
        out[f"relation_f1_{match}"] = rel["f1"]
        out[f"relation_p_{match}"] = rel["precision"]
        out[f"relation_r_{match}"] = rel["recall"]
    return out


def spacy_run(model, docs, types, relations, fold: bool, matches, limit_log: str, coreference=None) -> dict:
    """The product's spaCy path (``Predictor.extract`` with a recognizer), one mapping variant."""
    from glidre_core.spacy_ner import SpacyRecognizer

    t0 = time.perf_counter()
    rec = SpacyRecognizer(types, fold_into_misc=fold)
    results = model.extract_documents(docs, types, relations, entity_recognizer=rec, coreference=coreference)
    res = score(model, docs, [r.document for r in results], matches)
    res.update({"seconds": time.perf_counter() - t0, "fold_into_misc": fold, "type_map": rec.map})
    print(f"  spacy fold={fold} {limit_log}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items()
                                                          if isinstance(v, float) and "seconds" not in k), flush=True)
    return res


def model_run(model, docs, types, relations, matches, coreference=None) -> dict:
    t0 = time.perf_counter()
    results = model.extract_documents(docs, types, relations, coreference=coreference)
    pred = [r.document for r in results]
    res = score(model, docs, pred, matches)
    res["seconds"] = time.perf_counter() - t0
    print("  model: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--limit", type=int, default=None, help="first N documents of each split (default: all)")
    p.add_argument("--output-json")
    args = p.parse_args()

    from glidre_core.evaluation import data_entity_types
    from glidre_core.model_loading import load_model
    from glidre_core.readers import read_documents, relation_labels
    from glidre_core.spacy_ner import recognizer_info

    model = load_model(args.model)
    report = {"model": args.model, "spacy": recognizer_info(), "python": platform.python_version(),
              "protocol": "fold_into_misc chosen on dev by end-to-end relation F1 (first match rule), ties by entity F1; test reported once",
              "sets": {}}
    for name in args.sets:
        spec = SETS[name]
        key = f"relation_f1_{spec['matches'][0][0]}"
        out = {}
        dev = read_documents(spec["dev"], spec["format"])[: args.limit]
        test = read_documents(spec["test"], spec["format"])[: args.limit]
        # labels of the evaluated split, as `glidre evaluate --task joint` takes them
        dtypes, drels = data_entity_types(model, dev), relation_labels(dev)
        ttypes, trels = data_entity_types(model, test), relation_labels(test)
        print(f"{name}: {len(dev)} dev / {len(test)} test docs, types {ttypes}", flush=True)
        coref = spec["coreference"]  # CoNLL04's entities are single mentions: ungrouped, as `glidre evaluate`
        choices = {fold: spacy_run(model, dev, dtypes, drels, fold, spec["matches"], "dev", coref) for fold in (False, True)}
        best = max(choices, key=lambda f: (choices[f][key], choices[f]["entity_f1"]))  # ties: entity F1
        out["dev"] = {"spacy": {str(k): v for k, v in choices.items()}, "spacy_chosen_fold_into_misc": best,
                      "model": model_run(model, dev, dtypes, drels, spec["matches"], coref)}
        out["test"] = {"spacy": spacy_run(model, test, ttypes, trels, best, spec["matches"], "test", coref),
                       "model": model_run(model, test, ttypes, trels, spec["matches"], coref)}
        out["coreference"] = coref or model.config.coreference
        out["docs"] = {"dev": len(dev), "test": len(test)}
        report["sets"][name] = out
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
