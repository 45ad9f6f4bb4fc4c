"""Zero-shot test scores of a trained zero-shot trial model under an unseen-label rule chosen on dev.

The protocol of ``configs/experiments/zero_shot_calibrate.yaml`` without retraining: for each
rule (``none``: the model's own score for an unseen label; or neighbour transfer,
``GLiDREConfig.unseen_label_transfer``, with the ``k`` and ``tau`` that
``benchmarks/zero_shot_dev_diagnosis.py`` chose on dev), the unseen-label threshold is chosen again
on the dev hold-out's pseudo-unseen facts (``calibrate_unseen_threshold``), and only then the
experiment's held-out evaluation runs (Re-DocRED test restricted to the 18 unseen types: F1, P, R
and the ranking AUC). No choice reads a test document or a test type.

    python benchmarks/zero_shot_transfer.py --experiment configs/experiments/zero_shot_calibrate.yaml \\
        --model runs/experiments/zero_shot_calibrate/trial_*/checkpoint_000000/model \\
        --rule none --rule geomean:5:0.1 --output-json benchmarks/results/zero_shot_transfer.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from glidre_core.experiments import load_experiment_config
from glidre_core.experiments.heldout import evaluate_held_out, pseudo_unseen_dev
from glidre_core.modeling import GLiDRE
from glidre_core.training.calibration import calibrate_unseen_threshold

logger = logging.getLogger("zero_shot_transfer")


def parse_rule(text: str) -> dict[str, Any]:
    """``none`` or ``MODE:K:TAU`` (MODE: neighbours | geomean)."""
    if text == "none":
        return {"unseen_label_transfer": "none"}
    mode, k, tau = text.split(":")
    return {"unseen_label_transfer": mode, "unseen_label_neighbours": int(k), "unseen_label_temperature": float(tau)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--model", required=True, help="the trial's saved model directory")
    parser.add_argument("--rule", action="append", required=True, help="none | MODE:K:TAU (repeatable)")
    parser.add_argument("--output-json", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    exp = load_experiment_config(args.experiment)
    cfg, train, cal_docs = pseudo_unseen_dev(exp)
    model = GLiDRE.from_pretrained(args.model)
    results = []
    for text in args.rule:
        start = time.perf_counter()
        model.config = model.config.model_copy(update={**parse_rule(text), "unseen_label_threshold": None})
        cal = calibrate_unseen_threshold(model, cal_docs, cfg.unseen_calibration_labels, batch_size=cfg.batch_size)
        held = evaluate_held_out(model, exp.evaluate, train)
        row = {"rule": text, "dev_unseen_f1": cal.dev_f1, "unseen_threshold": cal.threshold,
               "test_f1": held["f1"], "test_precision": held["precision"], "test_recall": held["recall"],
               "test_auc": held.get("auc"), "gold_facts": held["gold_facts"], "seconds": time.perf_counter() - start}
        logger.info("%s", row)
        results.append(row)
    out = {
        "command": "python benchmarks/zero_shot_transfer.py " + " ".join(
            [f"--experiment {args.experiment}", f"--model {args.model}"] + [f"--rule {r}" for r in args.rule]
            + [f"--output-json {args.output_json}"]),
        "experiment": exp.name, "model": args.model,
        "protocol": "dev pseudo-unseen facts choose the threshold per rule; test restricted to the experiment's unseen types",
        "results": results,
    }
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
