"""Ray job entry point for corpus extraction (thin: parse the config, call the library).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".venv", "runs", "outputs", ".git"]}' \
        -- python jobs/extract.py --config configs/extract.yaml [--set key=value ...] [--resume]

Inside a job ``RAY_ADDRESS`` is set, so the library connects to the cluster the job runs on.
Exit status (see :mod:`glidre_core.extraction.entry`): 0 when the output reconciles with the
input, 1 on a whole-run failure, 2 when the run finished but the counts do not reconcile,
128 + N when stopped by signal N (rerun with ``--resume``).
"""

from __future__ import annotations

import sys

from glidre_core.extraction import ExtractionError, cli_values, load_extract_config, run_extraction, summary_text
from glidre_core.extraction.entry import job_parser, run_job


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("GLiDRE corpus extraction (Ray Data)", "YAML config (configs/extract.yaml)")
    parser.add_argument("--model")
    parser.add_argument("--labels")
    parser.add_argument("--entity-labels", help="entity types for documents without entities (span head models)")
    parser.add_argument("--entity-recognizer", choices=["auto", "model", "spacy"],
                        help="entities for documents without them: span head, spaCy, or auto (spaCy when installed)")
    parser.add_argument("--num-actors", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--num-gpus-per-actor", type=float)
    args = parser.parse_args(argv)
    values = cli_values(input=args.input, output=args.output, model=args.model, labels=args.labels,
                        entity_labels=args.entity_labels, entity_recognizer=args.entity_recognizer,
                        num_actors=args.num_actors, batch_size=args.batch_size,
                        num_gpus_per_actor=args.num_gpus_per_actor, resume=args.resume, overwrite=args.overwrite)
    return run_job("extract", lambda: run_extraction(load_extract_config(args.config, args.overrides, values)),
                   summary_text, (ExtractionError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
