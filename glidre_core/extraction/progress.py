"""Progress of a running extraction: a tiny counter actor fed by the model actors, and a driver
thread that logs a line with docs/s every few seconds.

Counts here are *approximate* (a retried actor task reports twice); the final numbers in the
manifest come from the written ledger, never from here. What this adds is visibility while the
job runs, and the steady-state throughput (docs/s after every actor has finished its first batch,
i.e. excluding actor start-up and model loading), which the benchmark reports.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class ProgressTracker:
    """Receives per-batch counts from the model actors."""

    def __init__(self) -> None:
        self.start = time.time()
        self.totals: dict[str, int] = {"extracted": 0, "failed": 0, "skipped": 0, "triplets": 0}
        self.first_report: dict[str, float] = {}
        self.events: list[tuple[float, int]] = []  # (time, documents processed in that batch)

    def add(self, actor_id: str, counts: dict[str, int]) -> None:
        now = time.time()
        for key, value in counts.items():
            self.totals[key] = self.totals.get(key, 0) + int(value)
        self.first_report.setdefault(actor_id, now)
        self.events.append((now, int(counts.get("extracted", 0)) + int(counts.get("failed", 0))))

    def snapshot(self) -> dict[str, Any]:
        return {"start": self.start, "now": time.time(), "totals": dict(self.totals), **steady_state(
            self.events, self.first_report)}


def steady_state(events: list[tuple[float, int]], first_report: dict[str, float]) -> dict[str, Any]:
    """Throughput after the last actor's first batch (all actors warm), over the following batches."""
    if not first_report:
        return {"steady_docs_per_second": None, "steady_docs": 0, "steady_seconds": 0.0, "actors_seen": 0}
    t0 = max(first_report.values())
    after = [(t, n) for t, n in events if t > t0]
    docs = sum(n for _, n in after)
    span = (after[-1][0] - t0) if after else 0.0
    rate = docs / span if span > 0 and docs else None
    return {"steady_docs_per_second": rate, "steady_docs": docs, "steady_seconds": span,
            "actors_seen": len(first_report)}


class ProgressLogger:
    """Context manager: a daemon thread logging the tracker's counts every ``interval_s``."""

    def __init__(self, tracker: Any, interval_s: float):
        self.tracker = tracker
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extract-progress", daemon=True)
        self.last: dict[str, Any] | None = None

    def __enter__(self) -> "ProgressLogger":
        self._t0 = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def poll(self) -> dict[str, Any] | None:
        try:
            self.last = ray.get(self.tracker.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort
            logger.debug("progress poll failed", exc_info=True)
        return self.last

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            snap = self.poll()
            if snap is None:
                continue
            t = snap["totals"]
            done = t["extracted"] + t["failed"]
            elapsed = max(time.time() - self._t0, 1e-9)
            rate = snap.get("steady_docs_per_second")
            logger.info(
                "progress: %d docs (%d extracted, %d failed, %d skipped), %d triplets | %.2f docs/s overall%s | %.0fs",
                done + t["skipped"], t["extracted"], t["failed"], t["skipped"], t["triplets"], done / elapsed,
                f", {rate:.2f} docs/s steady" if rate else "", elapsed,
            )
