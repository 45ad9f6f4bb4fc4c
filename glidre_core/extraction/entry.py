"""What the Ray job entry points of the corpus jobs (``jobs/extract.py``, ``jobs/distill.py``)
share: their common flags and the run / report / exit-status protocol.

Why here and not in each script: both are submitted the same way (``ray job submit ... --
python jobs/X.py --config ... [--resume | --overwrite]``), so the same flag must mean the same
thing, and operators (and ``glidre submit``) rely on one exit-status contract:

* 0: the run finished and the output reconciles with the input;
* 1: a whole-run failure (bad input, output exists, settings differ on resume, unusable
  model or teacher, a stall, an invalid config), logged as one line;
* 2: the run finished but the counts do not reconcile (see ``_manifest.json``);
* 128 + N: stopped by signal N; committed parts are kept and ``--resume`` continues.

The scripts only add their own flags and map them onto config keys.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

from glidre_core.extraction.session import JobInterrupted

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def job_parser(description: str, config_help: str) -> argparse.ArgumentParser:
    """A parser with the flags every corpus job has: ``--config``, ``--set``, ``--input``,
    ``--output``, ``--resume``, ``--overwrite``; the job adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.sub=value")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run, skipping documents already written")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def common_values(args: argparse.Namespace) -> dict[str, Any]:
    """The shared flags as config values (an unset flag is None, so it never hides the YAML's)."""
    return {"input": args.input, "output": args.output, "resume": True if args.resume else None,
            "overwrite": True if args.overwrite else None}


def run_job(name: str, run: Callable[[], dict[str, Any]], summary: Callable[[dict[str, Any]], str],
            errors: tuple[type[BaseException], ...], out: TextIO | None = None) -> int:
    """Configure logging, call ``run`` (which loads the config and runs the job, so that an
    invalid config is a whole-run failure like any other), write ``summary(manifest)`` to
    ``out`` (stdout: the job's result, what ``ray job logs`` shows) and return the exit status
    of the module docstring. ``errors`` are the job's whole-run failures."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    log = logging.getLogger(name)
    try:
        manifest = run()
    except errors as exc:
        log.error("%s", exc)
        return 1
    except JobInterrupted as exc:
        log.error("%s %s: committed parts are kept; rerun with --resume to continue", name, exc)
        return exc.exit_code
    stream = out if out is not None else sys.stdout
    stream.write(summary(manifest) + "\n")
    stream.flush()
    return 0 if manifest["reconciled"] else 2
