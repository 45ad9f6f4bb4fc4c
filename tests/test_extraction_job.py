"""`ray job submit` of ``jobs/extract.py`` against a real ``ray start --head`` (slow).

The head runs in its own temp dir and on free ports so it never meets another Ray on the
machine. It is started with ``--block`` as a child process of the test and stopped by signalling
that process group (which holds only the processes this head started): ``ray stop`` would kill
every Ray process of the user on the machine, including other people's clusters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from extraction_support import LABELS, REPO, expected_pairs, sample_records, save_tiny_model, write_jsonl

pytestmark = pytest.mark.slow

#: Never uploaded with the job: the virtualenv, training runs, outputs, caches.
EXCLUDES = [".venv", "runs", "outputs", ".git", "**/__pycache__", ".pytest_cache", "mlruns", "*.log", "mlflow.db"]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _dashboard_up(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """True once the job server answers (any HTTP status: token auth may refuse us), False if
    ``ray start`` died first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Ray dashboard at {url} did not come up in {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the head started by ``proc``: signal its own process group only (never ``ray stop``)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    else:  # ray start exited; its children (if any) are still in its process group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_head(bin_dir: Path, env: dict[str, str], temp_dir: str) -> tuple[subprocess.Popen, str]:
    gcs, dash, client, agent, agent_grpc, metrics, rt_agent, nm, om = _free_ports(9)
    worker_lo = 20000 + (os.getpid() % 2000) * 20
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={gcs}",
           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_agent}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--min-worker-port={worker_lo}", f"--max-worker-port={worker_lo + 19}",
           "--num-cpus=4", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    log = open(Path(temp_dir) / "ray_start.log", "a")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{dash}"


@pytest.fixture
def ray_head():
    bin_dir = Path(sys.executable).parent
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = None
    try:
        # On a heavily loaded machine the raylet can give up on a slow dashboard agent after a
        # hard-coded 15 s (ray-project/ray#65983): try a second time before failing.
        for _attempt in range(2):
            proc, url = _start_head(bin_dir, env, temp_dir)
            if _dashboard_up(url, proc, timeout=180):
                break
            _stop(proc)
        else:
            log = (Path(temp_dir) / "ray_start.log").read_text()
            raise RuntimeError("ray start --head failed twice:\n" + log[-3000:])
        yield {"url": url, "env": env, "temp_dir": temp_dir}
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_extraction_job(ray_head, tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    records = sample_records(10)
    corpus = write_jsonl(tmp_path / "in" / "docs.jsonl", records)
    out = tmp_path / "out"
    config = tmp_path / "extract.yaml"
    config.write_text(yaml.safe_dump({
        "input": str(corpus), "output": str(out), "model": str(model_dir), "labels": LABELS,
        "threshold": 0.001, "top_k": 1, "batch_size": 4, "progress_interval_s": 2,
    }))
    client_env = {**ray_head["env"], "RAY_AUTH_MODE": "token"}  # Ray >= 2.59 local clusters use token auth
    runtime_env = json.dumps({"excludes": EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head["url"],
           "--working-dir", ".", "--runtime-env-json", runtime_env, "--",
           "python", "jobs/extract.py", "--config", str(config), "--set", "actors.num_cpus=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=client_env, capture_output=True, text=True, timeout=480)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-5000:]
    assert "succeeded" in logs and "docs read       10" in logs

    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["docs_read"], manifest["docs_extracted"], manifest["docs_failed"]) == (10, 10, 0)
    assert manifest["triplets_written"] == expected_pairs(records) and manifest["reconciled"]
    assert list((out / "triplets").glob("*.parquet"))
