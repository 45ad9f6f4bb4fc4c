"""Operating the corpus job: resource planning, the stall watchdog, shutdown on signals, live
progress. The slow tests run the real job (``glidre extract``) in a subprocess that starts its
own local Ray, exactly as a user's ``glidre extract`` does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from extraction_support import LABELS, REPO, expected_pairs, read_table, sample_records, save_tiny_model, write_jsonl
from glidre_core.extraction.config import ExtractConfig
from glidre_core.extraction.progress import (
    InputSize, ProgressLogger, ProgressTracker, StallError, estimate_total, progress_line,
)
from glidre_core.extraction.resources import ClusterView, ResourceError, plan_resources


def cfg(**values) -> ExtractConfig:
    return ExtractConfig.model_validate({"input": "in", "output": "out", **values})


def view(cpus: float, gpus: float = 0.0, nodes: int = 1) -> ClusterView:
    return ClusterView(cpus=cpus, gpus=gpus, max_node_cpus=cpus / nodes, max_node_gpus=gpus / nodes, nodes=nodes)


# -- resource planning ---------------------------------------------------------------------------
def test_default_actor_cpus_shrink_to_leave_room_for_the_cpu_tasks():
    plan = plan_resources(cfg(actors={"min_size": 2, "max_size": 2}), view(2))
    # 3 CPU tasks x 0.25 = 0.75 reserved; (2 - 0.75) / 2 = 0.625 -> 0.6
    assert plan.shrunk and plan.actor_cpus == pytest.approx(0.6)
    assert 2 * plan.actor_cpus + 3 * plan.task_cpus <= 2
    roomy = plan_resources(cfg(actors={"min_size": 2, "max_size": 2}), view(8))
    assert not roomy.shrunk and roomy.actor_cpus == 1.0


def test_explicit_actor_cpus_that_do_not_fit_are_refused_with_the_numbers():
    with pytest.raises(ResourceError) as err:
        plan_resources(cfg(actors={"min_size": 2, "max_size": 2, "num_cpus": 1}), view(2))
    msg = str(err.value)
    assert "2.75 CPUs" in msg and "has 2" in msg and "actors.num_cpus" in msg and "--num-actors" in msg


def test_gpu_and_node_fit_are_checked():
    with pytest.raises(ResourceError, match="needs 2 x 1 = 2 GPUs but the cluster has 1"):
        plan_resources(cfg(actors={"min_size": 2, "max_size": 2, "num_gpus": 1}), view(16, gpus=1))
    with pytest.raises(ResourceError, match="largest node has 2"):
        plan_resources(cfg(actors={"num_cpus": 3}), view(8, nodes=4))
    with pytest.raises(ResourceError, match="largest node has 1"):
        plan_resources(cfg(actors={"num_gpus": 2}), view(16, gpus=4, nodes=4))
    # a pool that fits only partly: min fits, max is capped with a warning, not refused
    assert plan_resources(cfg(actors={"min_size": 1, "max_size": 8, "num_cpus": 1}), view(4)).actor_cpus == 1


# -- progress lines ------------------------------------------------------------------------------
def snap(**totals):
    base = {"extracted": 0, "failed": 0, "skipped": 0, "triplets": 0, "read_records": 0, "read_bytes": 0,
            "committed": 0, "parts": 0}
    return {"totals": {**base, **totals}, "steady_docs_per_second": None}


def test_progress_line_counts_processed_before_commit_and_gives_an_eta():
    line = progress_line(snap(extracted=40, failed=10, triplets=7), InputSize(docs=200, committed_before=50), 10.0)
    assert "50 docs processed (40 extracted, 10 failed)" in line and "committed 50" in line
    assert "7 triplets" in line and "5.00 docs/s" in line
    assert "50% of 200" in line and "ETA 20s" in line  # 100 of 200 done, 100 left at 5 docs/s
    # JSON Lines: the total is estimated from the bytes per record read so far
    assert estimate_total(InputSize(bytes=10_000), {"read_records": 10, "read_bytes": 1_000}) == 100
    assert "~100" in progress_line(snap(extracted=10, read_records=10, read_bytes=1000), InputSize(bytes=10_000), 5)
    assert "ETA" not in progress_line(snap(extracted=10), InputSize(), 5)


def test_stall_watchdog_interrupts_the_driver_with_a_diagnosis(ray_session):
    tracker = ProgressTracker.remote()
    watch = ProgressLogger(tracker, interval_s=0.5, stall_timeout_s=2, diagnose=lambda: "CPU=4 (test view)")
    t0 = time.time()
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # a library's handler that only sets a flag
    try:
        with pytest.raises(StallError):
            with watch:
                time.sleep(60)  # stands in for ds.write_datasink never returning
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.time() - t0 < 30
    assert watch.stalled is not None and "CPU=4 (test view)" in watch.stalled and "stall_timeout_s=2" in watch.stalled


def test_progress_keeps_the_watchdog_quiet_while_work_arrives(ray_session):
    tracker = ProgressTracker.remote()
    with ProgressLogger(tracker, interval_s=0.5, stall_timeout_s=2) as watch:
        for _ in range(8):
            tracker.add.remote("a", {"extracted": 1, "failed": 0, "skipped": 0, "triplets": 2})
            time.sleep(0.5)
    assert watch.stalled is None and watch.last["totals"]["extracted"] == 8


def test_index_checkpoints_hand_over_each_committed_part_once(ray_session):
    tracker = ProgressTracker.remote()
    got: list[list[dict]] = []
    with ProgressLogger(tracker, interval_s=5, checkpoint=got.append, checkpoint_interval_s=0.5):
        for k in range(3):
            ray_session.get(tracker.add_committed.remote(4, {"part": f"p{k}"}))
            time.sleep(1.2)
    parts = [s["part"] for batch in got for s in batch]
    assert parts == ["p0", "p1", "p2"] and len(got) == 3  # each part once, batched per interval


# -- the real job in a subprocess ----------------------------------------------------------------
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("RAY_ADDRESS", None)


def corpus(tmp_path: Path, copies: int) -> tuple[Path, list[dict]]:
    records = []
    for k in range(copies):
        for r in sample_records():
            records.append({**r, "doc_id": f"{r.get('doc_id', 'd')}-{k}"})
    return write_jsonl(tmp_path / "in" / "docs.jsonl", records), records


def job(model_dir: Path, corpus_path: Path, out: Path, *extra: str) -> list[str]:
    return [str(Path(sys.executable).parent / "glidre"), "extract", "--input", str(corpus_path), "--output", str(out),
            "--model", str(model_dir), "--batch-size", "4",
            "--set", "ray.address=local", "--set", "ray.num_cpus=2", "--set", "threshold=0.001",
            "--set", "top_k=1", "--set", "progress_interval_s=1", "--set", "lines_per_block=16",
            "--set", f"labels={json.dumps(LABELS)}", *extra]


@pytest.mark.slow
def test_two_actors_on_two_cpus_complete_or_refuse_fast(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    path, records = corpus(tmp_path, 10)
    ok = subprocess.run(job(model_dir, path, tmp_path / "out", "--num-actors", "2"), cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr[-4000:]
    assert "each actor gets 0.6 CPUs" in ok.stderr
    # live progress: one part for the whole run (docs_per_file 512 > 400 docs), yet the lines
    # count processed documents while committed is still 0, with an estimated total
    lines = [ln for ln in ok.stderr.splitlines() if "progress:" in ln]
    assert [ln for ln in lines if "committed 0" in ln and " 0 docs processed" not in ln], "\n".join(lines)
    assert any("of ~" in ln and "ETA" in ln for ln in lines), "\n".join(lines)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["docs_read"] == len(records) and manifest["reconciled"]

    t0 = time.time()
    refused = subprocess.run(job(model_dir, path, tmp_path / "out2", "--num-actors", "2",
                                 "--set", "actors.num_cpus=1"), cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and time.time() - t0 < 60
    assert "not enough CPUs" in refused.stderr and "cluster has 2" in refused.stderr


@pytest.mark.slow
def test_a_pipeline_that_cannot_run_fails_with_the_resource_view(tmp_path):
    """The planner switched off (as on an autoscaling cluster) and actors that take every CPU:
    the watchdog, not a hang, ends the job."""
    model_dir = save_tiny_model(tmp_path / "model")
    path, _ = corpus(tmp_path, 1)
    t0 = time.time()
    proc = subprocess.run(job(model_dir, path, tmp_path / "out", "--num-actors", "2", "--set", "actors.num_cpus=1",
                              "--set", "ray.check_resources=false", "--set", "stall_timeout_s=15"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "stalled" in proc.stderr and "cluster resources: CPU=2" in proc.stderr
    assert time.time() - t0 < 150


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _start_and_wait_for_commits(cmd: list[str], out: Path, log: Path) -> tuple[subprocess.Popen, list]:
    """Start the job; return once it committed a part and while it still runs, with its processes."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline = time.time() + 180
    procs: dict[int, psutil.Process] = {}
    while time.time() < deadline and proc.poll() is None:
        for p in _descendants(proc.pid):
            procs.setdefault(p.pid, p)
        if list((out / "documents").glob("*.parquet")) and "processed" in log.read_text():
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the job ended before it could be interrupted:\n" + log.read_text()[-3000:]
    for p in _descendants(proc.pid):
        procs.setdefault(p.pid, p)
    assert len(procs) >= 3, "expected Ray processes (gcs, raylet, workers) under the driver"
    return proc, list(procs.values())


def _assert_all_gone(procs: list[psutil.Process], within_s: float) -> None:
    _, alive = psutil.wait_procs(procs, timeout=within_s)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:  # do not leave them to other tests
        p.kill()
    assert not alive, f"Ray processes left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_driver_leaves_no_ray_process_and_resume_completes(tmp_path, sig):
    model_dir = save_tiny_model(tmp_path / "model")
    path, records = corpus(tmp_path, 40)  # 1,600 documents: long enough to strike mid-run
    out = tmp_path / "out"
    base = job(model_dir, path, out, "--set", "docs_per_file=16", "--set", "index_checkpoint_s=1")
    proc, procs = _start_and_wait_for_commits(base, out, tmp_path / "log1.txt")
    deadline = time.time() + 30
    while not (out / "_state" / "index.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # an index checkpoint during the run: recovery starts from it
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=60)
    assert code == (128 + sig if sig != signal.SIGKILL else -signal.SIGKILL)
    if sig != signal.SIGKILL:
        assert "rerun with --resume" in (tmp_path / "log1.txt").read_text()
    _assert_all_gone(procs, within_s=30)  # SIGKILL: the reaper's job
    assert not (out / "_manifest.json").exists()
    assert (out / "_state" / "index.json").exists(), "no index checkpoint was written during the run"
    checkpointed = json.loads((out / "_state" / "index.json").read_text())
    assert checkpointed["finalized_runs"] == []  # saved mid-run, not as a finished run
    done_before = read_table_rows(out)
    assert 0 < done_before < len(records)

    resumed = subprocess.run(base + ["--resume"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["docs_extracted"] == len(records) and manifest["duplicate_doc_ids"] == 0
    ledger = read_table(__import__("pyarrow.fs").fs.LocalFileSystem(), str(out / "documents"))
    assert sorted(ledger.column("doc_id").to_pylist()) == sorted(r["doc_id"] for r in records)
    assert manifest["triplets_written"] == expected_pairs(records)


def read_table_rows(out: Path) -> int:
    import pyarrow.fs as pafs

    table = read_table(pafs.LocalFileSystem(), str(out / "documents"))
    return 0 if table is None else table.num_rows
