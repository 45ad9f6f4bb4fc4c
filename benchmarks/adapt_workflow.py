"""``glidre adapt`` as a user runs it: a few labelled documents of new types, then held-out documents.

FREDo scores episodes with its own macro metric. A user of ``glidre adapt`` sees something else:
the saved model directory, evaluated by ``glidre evaluate`` (micro F1 over facts, all the new
labels as candidates at once). This script measures that, on SciERC (FREDo's cross-domain
documents, ``../shared/data/fredo/test_scierc.json``, 500 abstracts, 7 relation types):

* the held-out set is fixed: the last ``--heldout`` documents of the file;
* per seed, ``--support`` documents are drawn from the others (seeded), until every label in
  ``--labels`` has an example (labels are SciERC's codes as words: ``used for``, ...);
* arms, on the same held-out documents and labels:
  - ``zero_shot``: the base model, the label strings only (no example);
  - ``prototype``: ``adapt_to_documents`` with the default recipe (the one ``glidre adapt`` runs),
    the saved directory loaded back and scored through ``evaluate_model`` (``glidre evaluate``);
  - ``finetune``: the same with ``method=finetune`` (10 steps of the label FFN);
  - ``rules``: no model, every label for every pair the default recipe's rules allow (same
    sentence, at most 2 words apart, in the text orders the label's support facts show), so the
    model's part is visible.
* reported: micro P/R/F1 and the macro F1 over labels, mean and sample std over seeds, the seconds
  of adaptation and of evaluation.

The recipe was chosen on FREDo's dev episodes (0-49), not here; nothing is tuned on these
documents. The documents are SciERC test abstracts that FREDo's test episodes also use.

    .venv/bin/python benchmarks/adapt_workflow.py --seeds 0 1 2 3 4 \\
        --output-json benchmarks/results/adapt_workflow_scierc.json
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))
sys.path.append(str(REPO / "benchmarks"))

logger = logging.getLogger("adapt_workflow")

SCIERC_CODES = ("USED-FOR", "CONJUNCTION", "HYPONYM-OF", "EVALUATE-FOR", "PART-OF", "FEATURE-OF", "COMPARE")


def macro_f1(result: dict[str, Any], labels: list[str]) -> float:
    """Mean F1 over ``labels`` (a label never predicted nor gold counts 0; none is absent here)."""
    per = result.get("per_relation", {})
    return sum(per.get(lab, {}).get("f1", 0.0) for lab in labels) / len(labels)


def rule_facts(support, heldout, labels: list[str], recipe) -> list[tuple[str, str, str, str]]:
    """Every label for every held-out pair the recipe's pair rules allow, in the text orders the
    label's support facts show (:mod:`glidre_core.fewshot.candidates`)."""
    from glidre_core.fewshot.candidates import direction_allows, entity_rules, mention_geometry, support_directions

    positives = []
    for doc in support:
        index = {e.id: i for i, e in enumerate(doc.entities)}
        order = mention_geometry(doc).order
        positives += [(labels.index(r.label), int(order[index[r.head], index[r.tail]]))
                      for r in doc.relations if r.label in labels and r.head != r.tail]
    allowed = support_directions(len(labels), positives) if recipe.direction == "support" else None
    facts = []
    for doc in heldout:
        keep, geometry = entity_rules(doc, recipe.candidates, recipe.max_gap, orders=allowed is not None)
        h_idx, t_idx = keep.nonzero()
        ok = direction_allows(allowed, geometry.order[h_idx, t_idx]) if geometry is not None else None
        for p, (h, t) in enumerate(zip(h_idx, t_idx)):
            for r, lab in enumerate(labels):
                if ok is None or ok[p, r]:
                    facts.append((doc.doc_id, doc.entities[h].id, lab, doc.entities[t].id))
    return facts


def draw_support(pool, labels: list[str], k: int, seed: int):
    """``k`` documents of ``pool`` (seeded draws) in which every label has a fact; a draw that
    misses a label is redrawn (up to 10,000 times)."""
    rng = random.Random(seed)
    for _ in range(10_000):
        docs = rng.sample(pool, k)
        if {lab for d in docs for r in d.relations for lab in [r.label]} >= set(labels):
            return docs
    raise ValueError(f"no {k} documents hold every label of {labels}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fredo" / "test_scierc.json"))
    ap.add_argument("--labels", default="used for,conjunction,hyponym of,evaluate for,part of,feature of,compare",
                    help="comma-separated SciERC types as words (default: all 7)")
    ap.add_argument("--support", type=int, default=3, help="support documents per seed")
    ap.add_argument("--heldout", type=int, default=200, help="the last N documents of the file are held out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["zero_shot", "rules", "prototype", "finetune"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override the prototype arm's recipe (key=value, as glidre adapt --set); default: none")
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from glidre_core.evaluation import evaluate_model
    from glidre_core.fewshot.adapt import AdaptationRecipe
    from glidre_core.fewshot.episodes import relation_text
    from glidre_core.fewshot.workflow import adapt_to_documents
    from glidre_core.metrics import evaluate_facts
    from glidre_core.model_loading import load_model
    from glidre_core.readers import read_documents
    from model_benchmark import machine_info

    from glidre_core.overrides import parse_overrides

    torch.set_num_threads(args.threads)
    prototype_overrides = parse_overrides(args.overrides)
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    docs = read_documents(args.data, "docred", rel_info={c: relation_text(c) for c in SCIERC_CODES})
    pool, heldout = docs[: -args.heldout], docs[-args.heldout:]
    heldout = [d.model_copy(update={"relations": [r for r in d.relations if r.label in labels]}) for d in heldout]
    gold = sum(len(d.relations) for d in heldout)
    logger.info("%d held-out documents, %d gold facts of %d labels; support drawn from %d", len(heldout), gold,
                len(labels), len(pool))
    base = load_model(args.model)
    runs: list[dict[str, Any]] = []
    zero_shot = None
    for seed in args.seeds:
        support = draw_support(pool, labels, args.support, seed)
        row: dict[str, Any] = {"seed": seed, "support": [d.doc_id for d in support],
                               "support_facts": {lab: sum(r.label == lab for d in support for r in d.relations)
                                                 for lab in labels}}
        for arm in args.arms:
            start = time.perf_counter()
            adapt_seconds = 0.0
            if arm == "zero_shot":
                if zero_shot is None:  # the same for every seed: scored once
                    zero_shot = evaluate_model(base, heldout, labels)
                result = zero_shot
            elif arm == "rules":
                result = evaluate_facts(heldout, rule_facts(support, heldout, labels,
                                                            AdaptationRecipe(**prototype_overrides)))
            else:
                recipe = AdaptationRecipe(**prototype_overrides) if arm == "prototype" \
                    else AdaptationRecipe(method="finetune")
                with tempfile.TemporaryDirectory() as tmp:
                    record = adapt_to_documents(args.model, support, labels, Path(tmp) / "adapted", recipe)
                    adapt_seconds = record["seconds"]
                    result = evaluate_model(load_model(str(Path(tmp) / "adapted")), heldout, labels)
            row[arm] = {"f1": 100 * result["f1"], "precision": 100 * result["precision"],
                        "recall": 100 * result["recall"], "macro_f1": 100 * macro_f1(result, labels),
                        "predicted": result.get("predicted"), "adapt_seconds": adapt_seconds,
                        "seconds": time.perf_counter() - start}
            logger.info("seed %d %-9s F1 %.2f (P %.2f R %.2f) macro %.2f, %.1fs", seed, arm, row[arm]["f1"],
                        row[arm]["precision"], row[arm]["recall"], row[arm]["macro_f1"], row[arm]["seconds"])
        runs.append(row)

    summary = {}
    for arm in args.arms:
        summary[arm] = {}
        for key in ("f1", "precision", "recall", "macro_f1", "adapt_seconds"):
            values = [r[arm][key] for r in runs]
            summary[arm][key] = {"mean": statistics.mean(values),
                                 "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    out = {"protocol": __doc__.split("\n\n")[1].strip(), "model": args.model, "labels": labels,
           "prototype_recipe": AdaptationRecipe(**prototype_overrides).model_dump(),
           "support_docs": args.support, "heldout_docs": len(heldout), "heldout_gold_facts": gold,
           "seeds": args.seeds, "summary": summary, "runs": runs, "machine": machine_info(args.threads, torch.device("cpu"))}
    for arm, s in summary.items():
        print(f"{arm:10s} F1 {s['f1']['mean']:.2f} ± {s['f1']['std']:.2f}  P {s['precision']['mean']:.2f}  "
              f"R {s['recall']['mean']:.2f}  macro F1 {s['macro_f1']['mean']:.2f} ± {s['macro_f1']['std']:.2f}")
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(out, indent=1) + "\n")
        logger.info("wrote %s", args.output_json)


if __name__ == "__main__":
    main()
