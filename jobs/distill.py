"""Ray job entry point for ``glidre distill`` (thin: parse the config, call the library).

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".venv", "runs", "outputs", ".git"]}' \
        -- python jobs/distill.py --config configs/distill.yaml [--set key=value ...] [--resume | --overwrite]

Exit status (see :mod:`glidre_core.extraction.entry`): 0 when the output reconciles with the
input, 1 on a whole-run failure, 2 when the run finished but the counts do not reconcile,
128 + N when stopped by signal N (rerun with ``--resume``).
"""

from __future__ import annotations

import sys

from glidre_core.extraction.entry import common_values, job_parser, run_job
from glidre_core.llm.config import load_distill_config
from glidre_core.llm.distill import DistillError, run_distill, summary_text


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("GLiDRE distillation: raw corpus -> training corpus (Ray Data)",
                        "YAML config (configs/distill.yaml)")
    parser.add_argument("--teacher", help="model:DIR | model:default | hf:DIR | gguf:PATH (else the YAML's teacher)")
    args = parser.parse_args(argv)
    values = {**common_values(args), "teacher": args.teacher}
    return run_job("distill", lambda: run_distill(load_distill_config(args.config, args.overrides, values)),
                   summary_text, (DistillError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
