"""Does the dev F1 a training run records belong to the checkpoint it saves?

Trains the zero-shot reference protocol's recipe (``--experiment``'s first trial) for a few
epochs, optionally with label descriptions, and scores the final (best) model on the dev hold-out
three ways, at the threshold saved with it:

* ``live_full_precision``: the live model with its float32 training weights (what the trainer
  recorded before ``GLiDRE.weights_as_saved``);
* ``live_as_saved``: the live model inside ``weights_as_saved`` (what the trainer records now);
* ``reloaded``: the checkpoint written in ``save_dtype`` (float16 by default), loaded again.

It also reports the largest weight change the float16 round trip makes and the geometry of the
trained label vectors (mean norm, mean and max pairwise cosine), which says how close together
the model's labels sit and so how sensitive its scores are to such a change (README, zero-shot,
"Label descriptions").

    python benchmarks/checkpoint_round_trip.py --experiment configs/experiments/zero_shot_fredo_dev.yaml \\
        --epochs 4 --label-descriptions docred --output-json benchmarks/results/checkpoint_round_trip_descriptions.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from glidre_core.evaluation import dev_predictor, evaluate_dev
from glidre_core.experiments.config import build_training_config, expand_trials, load_base, load_experiment_config
from glidre_core.modeling import GLiDRE
from glidre_core.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_benchmark import machine_info  # noqa: E402  (the sibling benchmark script)


def label_geometry(model: GLiDRE) -> dict[str, float]:
    """Mean norm and pairwise cosines of the model's trained label vectors (its own label set)."""
    model.eval()
    with torch.no_grad():
        vectors = model.encode_labels(list(model.config.labels)).vectors.float()
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    sim = unit @ unit.T
    off = sim[~torch.eye(len(vectors), dtype=torch.bool)]
    return {"labels": len(vectors), "mean_norm": float(vectors.norm(dim=-1).mean()),
            "mean_pairwise_cos": float(off.mean()), "max_pairwise_cos": float(off.max())}


def scored(model: GLiDRE, docs, autocast) -> dict[str, Any]:
    with autocast():
        r = evaluate_dev(dev_predictor(model, batch_size=8), docs, threshold=None)
    return {k: r[k] for k in ("f1", "precision", "recall", "correct", "predicted", "gold", "threshold")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=226)
    parser.add_argument("--label-descriptions", default=None, help="docred or a file (default: names only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    exp = load_experiment_config(args.experiment)
    with tempfile.TemporaryDirectory(prefix="glidre-roundtrip-") as out:
        cfg = build_training_config(load_base(exp), exp, expand_trials(exp)[0], Path.cwd(), out)
        cfg = cfg.model_copy(update={"epochs": args.epochs, "eval_every": args.eval_every, "max_minutes": None,
                                     "unseen_calibration_labels": [], "label_descriptions": args.label_descriptions})
        trainer = Trainer(cfg)
        result = trainer.train()
        live = trainer.model
        last = result.history[-1]
        report: dict[str, Any] = {
            "history": [{k: r.get(k) for k in ("step", "dev_f1", "dev_precision", "dev_recall", "dev_threshold", "saved")}
                        for r in result.history],
        }
        if not last.get("saved"):
            raise SystemExit("the last evaluation did not save a checkpoint: rerun with fewer epochs")
        report["live_full_precision"] = scored(live, trainer.dev_docs, trainer.autocast)
        with live.weights_as_saved():
            report["live_as_saved"] = scored(live, trainer.dev_docs, trainer.autocast)
        reloaded = GLiDRE.from_pretrained(result.best_dir)
        report["reloaded"] = scored(reloaded, trainer.dev_docs, trainer.autocast)
        a, b = live.state_dict(), reloaded.state_dict()
        report["max_weight_change"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a
                                          if a[k].is_floating_point())
        report["label_geometry"] = label_geometry(reloaded)
    report.update({
        "command": "python benchmarks/checkpoint_round_trip.py --experiment " + args.experiment
                   + f" --epochs {args.epochs} --eval-every {args.eval_every}"
                   + (f" --label-descriptions {args.label_descriptions}" if args.label_descriptions else "")
                   + f" --output-json {args.output_json}",
        "save_dtype": cfg.model.save_dtype, "precision": trainer.precision, "steps": last["step"],
        "machine": machine_info(args.threads, torch.device("cpu")),
        "seconds": time.perf_counter() - start,
    })
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
