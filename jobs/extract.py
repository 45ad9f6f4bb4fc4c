"""Ray job entry point for corpus extraction (thin: parse the config, call the library).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".venv", "runs", "outputs", ".git"]}' \
        -- python jobs/extract.py --config configs/extract.yaml [--set key=value ...] [--resume]

Inside a job ``RAY_ADDRESS`` is set, so the library connects to the cluster the job runs on.
Exit status: 0 when the output reconciles with the input, 1 on a whole-run failure, 2 when the
run finished but the counts do not reconcile.
"""

from __future__ import annotations

import argparse
import logging
import sys

from glidre_core.extraction import ExtractionError, JobInterrupted, cli_values, load_extract_config, run_extraction, summary_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GLiDRE corpus extraction (Ray Data)")
    parser.add_argument("--config", required=True, help="YAML config (configs/extract.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--model")
    parser.add_argument("--labels")
    parser.add_argument("--entity-labels", help="entity types for documents without entities (span head models)")
    parser.add_argument("--entity-recognizer", choices=["auto", "model", "spacy"],
                        help="entities for documents without them: span head, spaCy, or auto (spaCy when installed)")
    parser.add_argument("--num-actors", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--num-gpus-per-actor", type=float)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = cli_values(input=args.input, output=args.output, model=args.model, labels=args.labels,
                        entity_labels=args.entity_labels, entity_recognizer=args.entity_recognizer,
                        num_actors=args.num_actors, batch_size=args.batch_size,
                        num_gpus_per_actor=args.num_gpus_per_actor, resume=args.resume, overwrite=args.overwrite)
    try:
        manifest = run_extraction(load_extract_config(args.config, args.overrides, values))
    except ExtractionError as exc:
        logging.getLogger("extract").error("%s", exc)
        return 1
    except JobInterrupted as exc:
        logging.getLogger("extract").error("extraction %s: committed parts are kept; rerun with --resume", exc)
        return exc.exit_code
    print(summary_text(manifest))
    return 0 if manifest["reconciled"] else 2


if __name__ == "__main__":
    sys.exit(main())
