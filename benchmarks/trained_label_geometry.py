"""Saved zero-shot models, reloaded: how close together their trained label vectors sit, and the
seen-type dev F1 the checkpoint itself gets (README, zero-shot, "Label descriptions").

For each ``--model`` directory (a trial's saved model of ``--experiment``): the geometry of its
label vectors (mean norm, mean and max pairwise cosine over its own label set) and, on the
experiment's 50-document dev hold-out with the model's own label set, the dev F1 at the threshold
saved with it and at the F1-best threshold of a sweep. A model trained with label descriptions is
also scored with its labels encoded as names alone, which says whether it uses the descriptions.

    python benchmarks/trained_label_geometry.py --experiment configs/experiments/zero_shot_fredo_dev.yaml \\
        --model runs/experiments/zero_shot_fredo_dev_descriptions/trial_*/checkpoint_000000/model \\
        --output-json benchmarks/results/trained_label_geometry.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from glidre_core.evaluation import dev_predictor, evaluate_dev
from glidre_core.experiments.config import build_training_config, expand_trials, load_base, load_experiment_config
from glidre_core.modeling import GLiDRE
from glidre_core.training.trainer import split_train_dev

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_benchmark import machine_info  # noqa: E402  (the sibling benchmark script)

KEYS = ("f1", "precision", "recall", "threshold")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--model", action="append", required=True, help="a saved model directory (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-json", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    exp = load_experiment_config(args.experiment)
    cfg = build_training_config(load_base(exp), exp, expand_trials(exp)[0], Path.cwd(), "unused")
    _, dev = split_train_dev(cfg)
    models: dict[str, Any] = {}
    for path in args.model:
        model = GLiDRE.from_pretrained(path)
        row: dict[str, Any] = {"label_geometry": label_geometry(model),
                               "descriptions": len(model.config.label_descriptions)}
        variants = [("as_saved", model.config.label_descriptions)]
        if model.config.label_descriptions:
            variants.append(("names_only", {}))
        for name, descriptions in variants:
            model.config.label_descriptions = descriptions
            model.label_encoder.clear_cache()
            for how, threshold in (("stored_threshold", None), ("sweep", "sweep")):
                r = evaluate_dev(dev_predictor(model, batch_size=8), dev, threshold=threshold)
                row[f"{name}_{how}"] = {k: r[k] for k in KEYS}
            logging.info("%s %s: %s", path, name, row)
        models[path] = row
    out = {
        "command": "python benchmarks/trained_label_geometry.py --experiment " + args.experiment
                   + "".join(f" --model {m}" for m in args.model) + f" --output-json {args.output_json}",
        "dev_docs": len(dev), "models": models,
        "machine": machine_info(args.threads, torch.device("cpu")), "seconds": time.perf_counter() - start,
    }
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(out, indent=1))
    print(json.dumps(models, indent=1))


if __name__ == "__main__":
    main()
