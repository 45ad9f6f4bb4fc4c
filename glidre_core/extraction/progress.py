"""Progress of a running extraction, and the stall watchdog.

* :class:`ProgressTracker`, a tiny (0-CPU) actor, receives counts as work finishes: the read
  stage reports records and bytes read, the model actors report every batch they finish
  (documents extracted / failed / skipped, triplets), and the sink reports every part it commits.
  So the log shows documents *processed* from the first batch on, while the *committed* count
  (what a ``--resume`` would skip) is kept separate.
* :class:`ProgressLogger`, a driver thread, logs one line every ``interval_s``: processed,
  committed, triplets, docs/s and, when the input size is known, percent done and ETA. It is
  also the stall watchdog: when no document was processed or committed for ``stall_timeout_s``
  it logs Ray's resource view and queued tasks, and sends SIGINT to the driver's main thread,
  where its handler raises :class:`StallError` with that diagnosis: the job fails instead of
  hanging (a real signal, because it also breaks a blocking wait).

Counts here are *approximate* (a retried actor task reports twice); the final numbers in the
manifest come from the written output, never from here. The steady-state throughput (docs/s
after every actor finished its first batch, i.e. without actor start-up and model loading) is
what the benchmark reports.

Input size for the ETA (decision): Parquet inputs give an exact document count from their
footers. JSON Lines give a byte size (uncompressed files only); the document count is estimated
from the bytes per record the read stage has seen so far. Compressed JSON Lines: no ETA.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from glidre_core.extraction.errors import ExtractionError

logger = logging.getLogger(__name__)


class StallError(ExtractionError):
    """No document finished for ``stall_timeout_s``; the message holds Ray's resource view."""


@dataclass(frozen=True)
class InputSize:
    """What is known up front about the work: exact documents, or bytes to estimate them from."""

    docs: int | None = None  # exact (Parquet footers)
    bytes: int | None = None  # uncompressed JSON Lines bytes
    committed_before: int = 0  # documents already in the output (resume)


@ray.remote(num_cpus=0)
class ProgressTracker:
    """Receives counts from the read tasks, the model actors and the sink."""

    def __init__(self) -> None:
        self.start = time.time()
        self.totals: dict[str, int] = {"extracted": 0, "failed": 0, "skipped": 0, "triplets": 0,
                                       "read_records": 0, "read_bytes": 0, "committed": 0, "parts": 0}
        self.first_report: dict[str, float] = {}
        self.events: list[tuple[float, int]] = []  # (time, documents processed in that batch)
        self.last_change = self.start
        self.summaries: list[dict[str, Any]] = []  # of committed parts, not yet checkpointed

    def add(self, actor_id: str, counts: dict[str, int]) -> None:
        now = time.time()
        for key, value in counts.items():
            self.totals[key] = self.totals.get(key, 0) + int(value)
        self.first_report.setdefault(actor_id, now)
        self.events.append((now, int(counts.get("extracted", 0)) + int(counts.get("failed", 0))))
        self.last_change = now

    def add_read(self, records: int, nbytes: int) -> None:
        self.totals["read_records"] += int(records)
        self.totals["read_bytes"] += int(nbytes)

    def add_committed(self, docs: int, summary: dict[str, Any] | None = None) -> None:
        self.totals["committed"] += int(docs)
        self.totals["parts"] += 1
        self.last_change = time.time()
        if summary is not None:
            self.summaries.append(summary)

    def take_summaries(self) -> list[dict[str, Any]]:
        """The summaries of parts committed since the last call (for the index checkpoints)."""
        out, self.summaries = self.summaries, []
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"start": self.start, "now": time.time(), "totals": dict(self.totals),
                "last_change": self.last_change, **steady_state(self.events, self.first_report)}


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


def estimate_total(size: InputSize, totals: dict[str, int]) -> int | None:
    """Documents in the whole input: exact, or bytes / (bytes per record read so far)."""
    if size.docs is not None:
        return size.docs
    if size.bytes and totals.get("read_records") and totals.get("read_bytes"):
        return round(size.bytes * totals["read_records"] / totals["read_bytes"])
    return None


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(snap: dict[str, Any], size: InputSize, elapsed: float) -> str:
    """One human line: processed, committed, triplets, rate, percent and ETA when known."""
    t = snap["totals"]
    processed = t["extracted"] + t["failed"]
    rate = snap.get("steady_docs_per_second") or (processed / elapsed if elapsed > 0 else 0.0)
    parts = [f"{processed + t['skipped']} docs processed ({t['extracted']} extracted, {t['failed']} failed"
             + (f", {t['skipped']} skipped" if t["skipped"] else "") + ")",
             f"committed {t['committed'] + size.committed_before}",
             f"{t['triplets']} triplets", f"{rate:.2f} docs/s"]
    total = estimate_total(size, t)
    if total:
        done = min(total, size.committed_before + processed + t["skipped"])
        eta = (total - done) / rate if rate > 0 else None
        approx = "" if size.docs is not None else "~"
        parts.append(f"{100.0 * done / total:.0f}% of {approx}{total}"
                     + (f", ETA {format_duration(eta)}" if eta is not None else ""))
    parts.append(f"{elapsed:.0f}s")
    return "progress: " + " | ".join(parts)


class ProgressLogger:
    """Context manager: a daemon thread that logs progress and watches for a stall."""

    def __init__(self, tracker: Any, interval_s: float, stall_timeout_s: float | None = None,
                 size: InputSize | None = None, diagnose: Any = None, checkpoint: Any = None,
                 checkpoint_interval_s: float | None = None):
        self.checkpoint = checkpoint  # called with the part summaries committed since the last call
        self.checkpoint_interval_s = checkpoint_interval_s
        self.tracker = tracker
        self.interval_s = interval_s
        self.stall_timeout_s = stall_timeout_s
        self.size = size or InputSize()
        self.diagnose = diagnose
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extract-progress", daemon=True)
        self.last: dict[str, Any] | None = None
        self.stalled: str | None = None  # the diagnosis, once the watchdog fired

    def __enter__(self) -> "ProgressLogger":
        self._t0 = time.time()
        self._seen = (-1, time.time())  # (work counter, when it last changed), in the driver's clock
        self._previous_sigint = None
        if threading.current_thread() is threading.main_thread():
            # Our own SIGINT handler while we watch, so that a stall raises StallError whatever
            # handler the process had (some libraries install one that only sets a flag).
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        self._thread.start()
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stalled is not None:
            raise StallError(self.stalled)
        previous = self._previous_sigint
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=120)  # an index checkpoint to object storage may be under way
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
        if self.stalled is None:
            self.poll()

    def poll(self) -> dict[str, Any] | None:
        try:
            self.last = ray.get(self.tracker.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort
            logger.debug("progress poll failed", exc_info=True)
        return self.last

    def _run(self) -> None:
        wait = min(self.interval_s, self.stall_timeout_s or self.interval_s, self.checkpoint_interval_s or 5.0, 5.0)
        next_line = time.time() + self.interval_s
        next_checkpoint = time.time() + (self.checkpoint_interval_s or 0)
        while not self._stop.wait(wait):
            snap = self.poll()
            now = time.time()
            if snap is not None and now >= next_line:
                logger.info("%s", progress_line(snap, self.size, now - self._t0))
                next_line = now + self.interval_s
            if self.checkpoint is not None and self.checkpoint_interval_s and now >= next_checkpoint:
                self._checkpoint()
                next_checkpoint = now + self.checkpoint_interval_s
            if self._check_stall(snap, now):
                return

    def _checkpoint(self) -> None:
        """Hand the parts committed since the last checkpoint to ``checkpoint`` (best effort: a
        failed checkpoint only means more footers to read after a crash)."""
        try:
            summaries = ray.get(self.tracker.take_summaries.remote(), timeout=30)
            if summaries:
                self.checkpoint(summaries)
        except Exception:  # noqa: BLE001
            logger.warning("index checkpoint failed (the run goes on)", exc_info=True)

    def _check_stall(self, snap: dict[str, Any] | None, now: float) -> bool:
        """Fire once when nothing was processed or committed for ``stall_timeout_s``."""
        if self.stall_timeout_s is None:
            return False
        if snap is not None:
            t = snap["totals"]
            work = t["extracted"] + t["failed"] + t["skipped"] + t["committed"] + t["read_records"]
            if work != self._seen[0]:
                self._seen = (work, now)
        idle = now - self._seen[1]
        if idle < self.stall_timeout_s:
            return False
        view = ""
        if self.diagnose is not None:
            try:
                view = self.diagnose()
            except Exception as exc:  # noqa: BLE001
                view = f"(resource view unavailable: {exc})"
        self.stalled = (f"no document was read, processed or committed for {idle:.0f}s "
                        f"(stall_timeout_s={self.stall_timeout_s:g}); Ray's view:\n{view}")
        logger.error("stall: %s", self.stalled)
        # A real SIGINT to the main thread (not _thread.interrupt_main, which waits until the main
        # thread runs Python code again): it also breaks a blocking wait in the driver.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return True


def write_with_progress(
    build_dataset: Any,
    sink: Any,
    *,
    job: str,
    run_id: str,
    size: InputSize,
    interval_s: float,
    stall_timeout_s: float | None,
    checkpoint: Any,
    checkpoint_interval_s: float,
    num_cpus: float,
    view_text: Any,
    stall_error: type[Exception] = StallError,
) -> dict[str, Any] | None:
    """Run a streaming job's write under progress logging and the stall watchdog (extract and
    distill share it): ``build_dataset(tracker)`` returns the Ray Dataset, whose rows go to
    ``sink`` (its ``progress`` set to the tracker); ``checkpoint(summaries)`` persists the
    committed-parts index every ``checkpoint_interval_s``; ``view_text()`` describes the cluster's
    resources in a stall diagnosis. Returns the last progress snapshot.

    The tracker is pinned to the driver's node, like Ray Data's own stats actors: a lost worker
    node must not take the counts (and the watchdog's input) with it
    (tests/test_multinode_faults.py). A stall raises ``stall_error``; an interrupt leaves the
    committed parts for ``--resume`` and propagates."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from glidre_core.extraction.session import JobInterrupted

    tracker = ProgressTracker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote()
    sink.progress = tracker
    ds = build_dataset(tracker)
    watch = ProgressLogger(tracker, interval_s, stall_timeout_s, size, view_text,
                           checkpoint=checkpoint, checkpoint_interval_s=checkpoint_interval_s)
    try:
        with watch:
            ds.write_datasink(sink, ray_remote_args={"num_cpus": num_cpus})
    except StallError as exc:
        raise stall_error(f"{job} {run_id} stalled: {exc}") from None
    except (KeyboardInterrupt, JobInterrupted):
        logger.warning("%s %s interrupted: committed parts stay; continue with --resume", job, run_id)
        raise
    return watch.last
