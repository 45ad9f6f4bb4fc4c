"""Ray job entry point for ``glidre distill`` (thin: parse the config, call the library).

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".venv", "runs", "outputs", ".git"]}' \
        -- python jobs/distill.py --config configs/distill.yaml [--set key=value ...] [--overwrite]

Exit status: 0 when the output reconciles with the input, 1 on a whole-run failure, 2 when the
run finished but the counts do not reconcile.
"""

from __future__ import annotations

import argparse
import logging
import sys

from glidre_core.extraction.session import JobInterrupted
from glidre_core.llm.config import load_distill_config
from glidre_core.llm.distill import DistillError, run_distill, summary_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GLiDRE distillation: raw corpus -> training corpus (Ray Data)")
    parser.add_argument("--config", required=True, help="YAML config (configs/distill.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--teacher", help="model:DIR | model:default | hf:DIR | gguf:PATH (else the YAML's teacher)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("distill")
    try:
        cfg = load_distill_config(args.config, args.overrides, {
            "input": args.input, "output": args.output, "teacher": args.teacher,
            "overwrite": True if args.overwrite else None})
        manifest = run_distill(cfg)
    except (DistillError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except JobInterrupted as exc:
        log.error("distill %s", exc)
        return exc.exit_code
    print(summary_text(manifest))
    return 0 if manifest["reconciled"] else 2


if __name__ == "__main__":
    sys.exit(main())
