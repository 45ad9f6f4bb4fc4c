"""How often a fact of a held-out relation type sits on an entity pair that also holds a fact of a
trained type: a count over the training data (Re-DocRED dev), no model.

Why: it is the premise of the ``gate`` and ``related`` rules of ``benchmarks/zero_shot_rules.py``.
If the facts of unseen types sit on pairs that hold trained-type facts far more often than pairs
in general, the model's trained labels say where to look. Counted for the experiment's 18 unseen
(test) types and for its 18 pseudo-unseen (dev) types; trained types = every type the experiment
does not hold out. Reads no test document.

    python benchmarks/unseen_pair_overlap.py --experiment configs/experiments/zero_shot_calibrate.yaml \\
        --output-json benchmarks/results/unseen_pair_overlap.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glidre_core.documents import Document
from glidre_core.experiments import load_experiment_config
from glidre_core.experiments.heldout import pseudo_unseen_dev
from glidre_core.readers import read_documents


def overlap(docs: list[Document], held_out: set[str], types: set[str]) -> dict[str, float | int]:
    """Facts of ``types``, the share of them on an ordered pair that holds a trained-type fact,
    and the share of all ordered entity pairs that hold one."""
    facts = on_trained = pairs = trained_pairs_total = 0
    for d in docs:
        labels: dict[tuple[str, str], set[str]] = {}
        for r in d.relations:
            labels.setdefault((r.head, r.tail), set()).add(r.label)
        trained_pairs = {p for p, ls in labels.items() if ls - held_out}
        n = len(d.entities)
        pairs += n * (n - 1)
        trained_pairs_total += len(trained_pairs)
        for p, ls in labels.items():
            k = len(ls & types)
            facts += k
            on_trained += k if p in trained_pairs else 0
    return {"facts": facts, "share_on_a_trained_pair": on_trained / max(facts, 1),
            "ordered_pairs": pairs, "share_of_pairs_with_a_trained_fact": trained_pairs_total / max(pairs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--output-json", required=True)
    args = ap.parse_args()
    exp = load_experiment_config(args.experiment)
    cfg, _, _ = pseudo_unseen_dev(exp)
    held_out = set(cfg.exclude_labels)
    pseudo = set(cfg.unseen_calibration_labels)
    docs = read_documents(cfg.train.path, cfg.train.format)
    out = {
        "command": f"python benchmarks/unseen_pair_overlap.py --experiment {args.experiment} --output-json {args.output_json}",
        "data": cfg.train.path, "docs": len(docs), "held_out_types": len(held_out),
        "unseen_types": overlap(docs, held_out, held_out - pseudo),
        "pseudo_unseen_types": overlap(docs, held_out, pseudo),
    }
    Path(args.output_json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
