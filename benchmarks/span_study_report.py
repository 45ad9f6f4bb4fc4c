"""Issue 11.1's span-representation study: every arm scored on DEV data only.

Each arm is a run of ``configs/default_model_joint.yaml`` (entity recognition trained through the
top encoder layers) with one ``model.span_representation``; ``benchmarks/span_study.sh`` trains
them. This script scores each arm's best checkpoint, and the stage-2 default model it started
from (``--baseline``), on:

* the 50 Re-DocRED dev documents held out of training (``split_train_dev`` of the config, the same
  seed as every stage): relation F1 with given entities, strict mention F1, and end-to-end
  relation F1 from raw text (strict and relaxed entity matching, untyped);
* CoNLL04 dev: strict typed entity F1 and strict typed end-to-end relation F1.

The winner is the arm with the best mean of the two end-to-end relation F1s (Re-DocRED relaxed,
CoNLL04 strict), the quantity issue 11's targets are stated in. Nothing here reads a test set.

    python benchmarks/span_study_report.py --runs runs/span_study \\
        --output-json benchmarks/results/span_study.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONFIG = REPO / "configs" / "default_model_joint.yaml"
CONLL04_DEV = REPO.parent / "shared" / "data" / "conll04" / "conll04_dev.json"


def score(model_dir: str, redocred_dev, conll_dev) -> dict:
    from glidre_core.evaluation import evaluate_entities, evaluate_joint, evaluate_model, evaluation_labels
    from glidre_core.model_loading import load_model

    model = load_model(model_dir)
    t0 = time.perf_counter()
    rel = evaluate_model(model, redocred_dev, labels=evaluation_labels(redocred_dev, "docred"))
    ner = evaluate_entities(model, redocred_dev)
    out = {
        "redocred_dev50": {
            "relation_given_entities_f1": rel["f1"],
            "mention_f1": ner["f1"],
        },
        "conll04_dev": {},
    }
    for match in ("strict", "relaxed"):
        j = evaluate_joint(model, redocred_dev, relation_labels_=evaluation_labels(redocred_dev, "docred"),
                           match=match, typed=False)
        out["redocred_dev50"][f"end_to_end_{match}_f1"] = j["f1"]
    j = evaluate_joint(model, conll_dev, relation_labels_=evaluation_labels(conll_dev, "conll04"),
                       match="strict", typed=True, coreference="none")  # as `glidre evaluate` scores CoNLL04
    out["conll04_dev"] = {"entity_f1": j["entity"]["f1"], "end_to_end_strict_f1": j["f1"]}
    out["selection_score"] = (out["redocred_dev50"]["end_to_end_relaxed_f1"] + out["conll04_dev"]["end_to_end_strict_f1"]) / 2
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/span_study")
    p.add_argument("--baseline", default="default", help="the model the arms started from")
    p.add_argument("--output-json")
    p.add_argument("--study", help="what the arms are (stored in the report; default: the span study)")
    args = p.parse_args()

    import yaml

    from glidre_core.readers import read_documents
    from glidre_core.training.config import TrainingConfig
    from glidre_core.training.trainer import split_train_dev

    data = yaml.safe_load(CONFIG.read_text())
    data.pop("init_from", None)  # only the data split is needed here, not the starting weights
    cfg = TrainingConfig(**data)
    # split_train_dev returns the Re-DocRED held-out 50 plus the extra_dev corpora: keep the former
    _, dev = split_train_dev(cfg.model_copy(update={"extra_dev": []}))
    conll_dev = read_documents(str(CONLL04_DEV), "conll04")
    report: dict = {"study": args.study or "issue 11.1: span representations (configs/default_model_joint.yaml)",
                    "protocol": __doc__.split("\n\n")[1].strip(), "dev_docs": {"redocred": len(dev),
                                                                              "conll04": len(conll_dev)},
                    "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
                    "arms": {}}
    report["baseline"] = {"model": args.baseline, **score(args.baseline, dev, conll_dev)}
    print(json.dumps({"baseline": report["baseline"]}), flush=True)
    for arm_dir in sorted(Path(args.runs).iterdir()):
        best = arm_dir / "best"
        if not (best / "config.json").exists():
            continue
        history = json.loads((arm_dir / "history.json").read_text()) if (arm_dir / "history.json").exists() else []
        cfg_json = json.loads((best / "config.json").read_text())
        arm = {"span_representation": cfg_json.get("span_representation"), "model": str(best),
               "relation_training": {k: cfg_json.get(k) for k in ("dropout", "relation_loss_weight", "span_loss_weight")},
               "steps": history[-1]["step"] if history else None,
               "train_minutes": history[-1]["minutes"] if history else None,
               **score(str(best), dev, conll_dev)}
        report["arms"][arm_dir.name] = arm
        print(json.dumps({arm_dir.name: arm}), flush=True)
    if report["arms"]:
        report["winner"] = max(report["arms"], key=lambda k: report["arms"][k]["selection_score"])
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
