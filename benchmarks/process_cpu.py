#!/usr/bin/env python
"""Per-process CPU accounting while a command runs: which processes take the cores.

Samples ``/proc/<pid>/stat`` (user + system CPU) of every process every ``--interval`` seconds
while COMMAND runs, then prints, for the window ``--from`` .. ``--to`` seconds after the start,
each process's CPU seconds and share of one core. Used to find where the extraction job's time
goes on this 2-core machine (README, "Extraction job")::

    python benchmarks/process_cpu.py --from 40 --to 60 -- \\
        python benchmarks/extraction_throughput.py --docred ../shared/data/docred/test.json \\
        --num-docs 300 --actors 2 --skip-scaling --output-json /tmp/et.json

Pick the window from the command's own progress lines (the job's steady state). Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[str, tuple[float, str]]:
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:90]
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[pid] = ((int(fields[11]) + int(fields[12])) / HZ, cmd)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--from", dest="start", type=float, required=True, help="window start, s after launch")
    p.add_argument("--to", dest="end", type=float, required=True, help="window end, s after launch")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command to run after --")
    samples: list[tuple[float, dict]] = []
    t0 = time.time()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time() - t0, snapshot()))
            done.wait(args.interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    rc = subprocess.call(cmd)
    done.set()
    thread.join()
    a = min(samples, key=lambda s: abs(s[0] - args.start))
    b = min(samples, key=lambda s: abs(s[0] - args.end))
    span = b[0] - a[0]
    if span <= 0:
        print("empty window", file=sys.stderr)
        return 2
    rows = sorted(((cpu - a[1].get(pid, (0.0, ""))[0], pid, name) for pid, (cpu, name) in b[1].items()), reverse=True)
    print(f"window {a[0]:.1f}-{b[0]:.1f} s ({span:.1f} s), {os.cpu_count()} CPUs")
    for cpu, pid, name in rows[: args.top]:
        if cpu > 0.05:
            print(f"{cpu:7.2f} s {100 * cpu / span:6.1f}% of a core  {pid:>7} {name}")
    print(f"total {sum(r[0] for r in rows):.2f} CPU s of {span * os.cpu_count():.1f} available")
    return rc


if __name__ == "__main__":
    sys.exit(main())
