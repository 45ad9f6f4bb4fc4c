"""``python -m glidre_core.extraction.reaper PID``: stop what a SIGKILLed driver left running.

Started by :func:`glidre_core.extraction.session.ray_session` when a job starts its own local
Ray (see that module for why). Every ``--interval`` seconds it records the descendants of the
driver ``PID`` (Ray's gcs_server, raylet, dashboard, agents, workers and actors); once the
driver has exited it sends SIGTERM to the recorded processes still alive, waits a few seconds
and SIGKILLs the rest. A process is identified by PID *and* start time, so a PID reused by an
unrelated process after the driver died is never signalled. Terminated normally (SIGTERM from
the driver after a clean ``ray.shutdown()``), it exits without touching anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

import psutil

logger = logging.getLogger("glidre_core.extraction.reaper")


def _snapshot(driver: psutil.Process, known: dict[int, float]) -> None:
    me = os.getpid()
    try:
        for child in driver.children(recursive=True):
            if child.pid == me:
                continue
            try:
                known.setdefault(child.pid, child.create_time())
            except psutil.Error:
                continue
    except psutil.Error:
        pass


def reap(known: dict[int, float], grace_s: float = 5.0) -> int:
    """Terminate (then kill) the recorded processes that still run; returns how many were alive."""
    alive: list[psutil.Process] = []
    for pid, created in known.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                alive.append(proc)
        except psutil.Error:
            continue
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(alive)


def watch(pid: int, interval_s: float = 1.0) -> int:
    """Record ``pid``'s descendants until it exits, then reap them."""
    try:
        driver = psutil.Process(pid)
    except psutil.Error:
        return 0
    known: dict[int, float] = {}
    while True:
        _snapshot(driver, known)
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        time.sleep(interval_s)
    n = reap(known)
    if n:
        logger.warning("driver %d is gone: stopped %d processes it had left running", pid, n)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pid", type=int)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's death or SIGTERM ends us
    logging.basicConfig(level=logging.INFO)
    watch(args.pid, args.interval)


if __name__ == "__main__":
    main()
