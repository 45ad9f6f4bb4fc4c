"""The run-level part of ``_manifest.json``, shared by the corpus jobs (``glidre extract`` and
``glidre distill``).

Why one helper: both manifests answer the same questions first (which run, when, how long,
from which input, did the counts reconcile, how fast) and a reader (a person, the tests, the
benchmarks, ``glidre submit``'s summary) must find them under the same keys with the same
meaning. Each job adds its own body (model and labels, or teacher, prompt and tokens); the
fields built here are:

* ``status`` / ``reconciled``: ``complete`` iff :func:`reconciles`, i.e. every input record
  read is in the output exactly once, as a result or as an error, and every job-specific check
  (no duplicates, nothing lost, the files on disk agree) holds;
* ``run_id``, ``started_at``, ``ended_at``, ``duration_s``;
* ``input``, ``input_format``, ``input_files``;
* ``throughput``: documents processed *by this run* per second (a resumed run does not count
  what an earlier run did), any job-specific rates, and the steady-state figures of the progress
  tracker (:mod:`glidre_core.extraction.progress`);
* ``config`` (last).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

#: The progress snapshot's steady-state keys reported by default.
STEADY_KEYS = ("steady_docs_per_second",)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id(started: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sortable by start time, unique across concurrent runs. It
    prefixes every part a run writes, so parts of two runs of one output never collide."""
    return f"{(started or utc_now()):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def per_second(count: float, seconds: float) -> float | None:
    """``count / seconds``, None for a zero-length run (no rate rather than a division error)."""
    return count / seconds if seconds > 0 else None


def reconciles(docs_read: int, outcomes: Mapping[str, int], checks: Mapping[str, bool] | None = None) -> bool:
    """True when every record read has exactly one outcome (``docs_read == sum(outcomes)``,
    e.g. extracted + failed, or written + errored) and every job-specific check holds."""
    return docs_read == sum(outcomes.values()) and all((checks or {}).values())


def throughput(processed: int, seconds: float, snapshot: Mapping[str, Any] | None = None,
               rates: Mapping[str, float] | None = None,
               steady_keys: tuple[str, ...] = STEADY_KEYS) -> dict[str, Any]:
    """The manifest's ``throughput`` section: ``docs_per_second`` (``processed``: this run's
    documents), then ``rates`` (name -> count, each divided by ``seconds``), then the
    ``steady_keys`` of the progress ``snapshot`` (None when the run had no Ray stage)."""
    out: dict[str, Any] = {"docs_per_second": per_second(processed, seconds)}
    out.update({name: per_second(count, seconds) for name, count in (rates or {}).items()})
    out.update({key: (snapshot or {}).get(key) for key in steady_keys})
    return out


def build_manifest(*, run_id: str, started: datetime, ended: datetime, reconciled: bool, input_uri: str,
                   input_format: str, input_files: int, body: Mapping[str, Any], throughput: Mapping[str, Any],
                   config: Mapping[str, Any], after_throughput: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole manifest: the shared run and input fields, the job's ``body``, ``throughput``,
    any job sections that belong after it (``after_throughput``), and ``config`` last."""
    return {
        "status": "complete" if reconciled else "incomplete",
        "reconciled": reconciled,
        "run_id": run_id,
        "started_at": started.isoformat(),
        "ended_at": ended.isoformat(),
        "duration_s": round((ended - started).total_seconds(), 3),
        "input": input_uri,
        "input_format": input_format,
        "input_files": input_files,
        **body,
        "throughput": dict(throughput),
        **(after_throughput or {}),
        "config": dict(config),
    }
