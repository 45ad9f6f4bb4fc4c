"""The Ray a job runs on, and how the job gives it back: on success, on error, on SIGINT/SIGTERM,
and even when the driver is killed with SIGKILL.

Decisions:

* ``ray.address`` unset follows Ray's own rules: ``RAY_ADDRESS`` (set inside ``ray job
  submit``), then a cluster started with ``ray start`` on this machine, else a new local Ray.
  Only a Ray the job *started* is stopped by the job; a cluster it merely connected to is left
  alone (other jobs may use it).
* SIGINT and SIGTERM raise :class:`JobInterrupted` in the driver's main thread, so the normal
  unwinding runs: Ray Data cancels its work, :func:`ray_session` calls ``ray.shutdown()`` (which
  stops the local Ray's processes), and the committed output stays valid for ``--resume``.
* SIGKILL cannot be caught, so a job that starts a local Ray also starts a tiny *reaper*
  process (``python -m glidre_core.extraction.reaper``) that watches the driver. It records the
  driver's descendant processes (gcs_server, raylet, dashboard, workers and actors) every
  second; when the driver is gone it terminates those still alive (matching PID and start
  time, so a reused PID is never hit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Iterator

logger = logging.getLogger(__name__)


class JobInterrupted(BaseException):
    """SIGINT / SIGTERM reached the driver (a ``BaseException`` so no ``except Exception`` in a
    library swallows it)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`JobInterrupted` for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        # Restore the defaults first: a second signal while we unwind ends the process at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
        raise JobInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, h)


def start_reaper(pid: int | None = None) -> subprocess.Popen | None:
    """Start the SIGKILL safety net for the local Ray this process is about to start."""
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "glidre_core.extraction.reaper", str(pid or os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the terminal's process group must not reach it
        )
    except OSError as exc:  # never fail a job because the safety net could not start
        logger.warning("could not start the Ray reaper (%s): a SIGKILLed driver would leave Ray running", exc)
        return None


def _will_start_local_ray(address: str | None) -> bool:
    if address == "local":
        return True
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return False
    try:
        from ray._private.services import find_gcs_addresses

        return not find_gcs_addresses()
    except Exception:  # noqa: BLE001 - private API: assume we start one (the reaper is harmless then)
        return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[bool]:
    """Use the Ray already initialised in this process, else connect to / start one.

    Yields whether this context started (and will stop) a local Ray. Signals are turned into
    :class:`JobInterrupted` inside the block, and a Ray it started is shut down however the
    block ends.
    """
    import ray

    if ray.is_initialized():
        with interruptible():
            yield False
        return
    starts = _will_start_local_ray(address)
    reaper = start_reaper() if starts else None
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
    with interruptible():
        try:
            try:
                ray.init(**kwargs, **({"num_cpus": num_cpus} if num_cpus else {}))
            except ValueError as exc:  # connecting to an existing cluster does not take num_cpus
                if "existing cluster" not in str(exc):
                    raise
                ray.init(**kwargs)
            # ray.init installs its own SIGTERM handler (sys.exit): take it back.
            with interruptible():
                yield starts
        finally:
            if ray.is_initialized():
                logger.info("stopping %s", "the local Ray this job started" if starts else "the Ray connection")
                ray.shutdown()
            if reaper is not None and reaper.poll() is None:
                reaper.terminate()
