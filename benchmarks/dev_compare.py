#!/usr/bin/env python
"""Dev-only comparison of saved models (how the default model's stage-2 heads were chosen).

For each model directory: relation F1 (threshold swept) on the 50 Re-DocRED dev documents that
``configs/default_model.yaml`` holds out (same seed and split as training), and on CoNLL04 dev,
both with gold entities. No test data is read.

    python benchmarks/dev_compare.py runs/default_model/best runs/default_model_entities/best
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from glidre_core import GLiDRE  # noqa: E402
from glidre_core.evaluation import dev_sweep  # noqa: E402
from glidre_core.readers import read_documents, relation_labels  # noqa: E402
from glidre_core.training import load_training_config  # noqa: E402
from glidre_core.training.trainer import split_train_dev  # noqa: E402


def main(model_dirs: list[str]) -> None:
    _, redocred_dev = split_train_dev(load_training_config("configs/default_model.yaml"))
    conll_dev = read_documents("../shared/data/conll04/conll04_dev.json", "conll04")
    for directory in model_dirs:
        model = GLiDRE.from_pretrained(directory)
        # labels as strings: dev_sweep embeds them once, in eval mode, through model.predictor
        redocred = dev_sweep(model, redocred_dev, list(model.config.labels))
        conll = dev_sweep(model, conll_dev, relation_labels(conll_dev))
        print(json.dumps({"model": directory, "redocred_dev_f1": redocred.best_f1, "conll04_dev_f1": conll.best_f1}))


if __name__ == "__main__":
    main(sys.argv[1:])
