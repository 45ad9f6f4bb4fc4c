"""Ray job entry point for training (thin: parse the config, call the library).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/train.py --config configs/finetune.yaml [--set key=value ...] [--run-name NAME]

or ``glidre submit train --config configs/finetune.yaml`` (which builds that command). Inside a
job ``RAY_ADDRESS`` is set, so Ray Train runs on the cluster the job runs on. Submitting the
same run name again resumes the run from its last checkpoint in ``storage.path``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from glidre_core.ray_train import train
from glidre_core.training import load_training_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GLiDRE training on Ray Train")
    parser.add_argument("--config", required=True, help="YAML config (configs/finetune.yaml, configs/pretrain.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value")
    parser.add_argument("--run-name", default=None, help="run name (same name = resume); default storage.run_name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(load_training_config(args.config, args.overrides), run_name=args.run_name)
    print(json.dumps(result.summary(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
