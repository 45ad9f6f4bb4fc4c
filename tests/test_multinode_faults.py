"""Multi-node faults on a real multi-raylet Ray cluster on this machine (slow).

What is tested: the extraction job (Ray Data) survives (a) the loss of a worker node that hosts
an Extractor actor and (b) a crashed (SIGKILLed) Extractor actor, and re-runs the lost work: every
input document ends up in the output exactly once; Ray Train resumes from its last committed
checkpoint when the node of its worker group is lost.

How: ``python tests/test_multinode_faults.py WORKDIR`` (the *driver*, at the bottom of this file)
starts its own ``ray.cluster_utils.Cluster`` - a head and worker nodes, each a real raylet with
its own object store - runs the three scenarios on it and writes ``report.json``; the tests below
only run that driver once (module fixture) and assert on the report and the written output. A
subprocess because a process can hold only one Ray: the other tests share the session's local Ray
(``conftest.ray_session``), which this cluster must neither join nor disturb.

Isolation and cleanup: the driver gets its own ``RAY_TMPDIR`` (so the cluster's session files and
its ``ray_current_cluster`` address file never meet another Ray on the machine) and its own
process group, which holds every process of the cluster (raylets, GCS, agents, workers): the
driver shuts the cluster down in ``finally``; the fixture then SIGKILLs whatever is left in that
process group (never ``ray stop``, never by name).

Determinism: nothing is timed. The model actors (a subclass of ``Extractor`` defined here) log
which process ran which documents and, until the test opens a *gate* file, hold their results
after their first few documents; the test strikes only once a part is committed to the output
ledger and an actor is holding, then opens the gate. The held (uncommitted) batches of the killed
actor are therefore always lost work that Ray must redo. Training workers likewise hold at step 3
(after the step-2 checkpoint is committed) until their node is removed.

Resources: logical CPUs, not cores (the machine has 2): head 1 CPU (the driver, the Train
controller, the progress tracker, and the write tasks, which Ray Data pins to the driver's node
for a local output), three workers of 2 CPUs. An Extractor actor asks for 1.25 CPUs, so never on
the head and at most one per worker: a node loss kills exactly one of the two, and the third
worker has room for its restart - Ray Data does not move a dead actor's tasks to another actor,
it waits for that actor's restart, which needs room somewhere (ray-project/ray#26991). Training
(2 workers x 1 CPU, STRICT_PACK) fills one worker and restarts on another. CPU tasks take 1 CPU:
at 0.25 Ray started ~35 short-lived worker processes for 40 documents, 3x slower on 2 cores.
GCS health checks are tightened so a dead raylet is noticed in ~5 s instead of ~15-30 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the driver runs as a script; tests/ holds its helpers
    sys.path.insert(0, str(HERE))

from extraction_support import expected_pairs, read_table, sample_records, save_tiny_model, write_jsonl  # noqa: E402

pytestmark = pytest.mark.slow

N_DOCS = 40
HOLD_AFTER = 4  # documents an actor returns before it holds (until the gate opens)
DRIVER_TIMEOUT_S = 420


# == the tests =====================================================================================
@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Any]:
    """Run the driver once (all scenarios share one cluster: starting one costs ~15 s here)."""
    work = Path(tempfile.mkdtemp(prefix="mnf", dir="/tmp"))  # short: Ray's socket paths are length-limited
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(work / "ray"), RAY_raylet_start_wait_time_s="120")
    (work / "ray").mkdir()
    log_path = tmp_path_factory.mktemp("multinode") / "driver.log"
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, str(work)], env=env, cwd=HERE.parent, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _kill_group(proc)
    elapsed = time.time() - t0
    text = log_path.read_text(errors="replace")
    report_file = work / "report.json"
    if proc.returncode != 0 or not report_file.exists():  # the work dir (Ray's logs) is kept for a look
        pytest.fail(f"driver failed (rc {proc.returncode}, {elapsed:.0f}s; Ray logs under {work}); log tail:\n"
                    f"{text[-6000:]}")
    data = json.loads(report_file.read_text())
    data.update(elapsed_s=elapsed, log_tail=text[-4000:])
    print(f"multi-node driver: {elapsed:.1f}s; phases {data.get('timings')}")
    yield data
    shutil.rmtree(work, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """Whatever the driver left (it shuts its cluster down itself): SIGKILL its process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _scenario(report: dict[str, Any], name: str) -> dict[str, Any]:
    sc = report[name]
    if "error" in sc:
        pytest.fail(f"{name}: {sc['error']}\n{report['log_tail']}")
    return sc


def _check_extraction(report: dict[str, Any], sc: dict[str, Any]) -> None:
    m = sc["manifest"]
    records = sample_records(N_DOCS)
    ids = [r["doc_id"] for r in records]
    assert m["status"] == "complete" and m["reconciled"], m
    assert m["docs_read"] == m["docs_extracted"] + m["docs_failed"] == N_DOCS, m
    assert m["docs_failed"] == 0 and m["duplicate_doc_ids"] == 0, m
    # every input document exactly once in the ledger, and all its triplets exactly once
    assert sorted(sc["ledger_ids"]) == sorted(ids)
    assert m["triplets_written"] == expected_pairs(records) == len(sc["triplet_keys"])
    assert len(set(map(tuple, sc["triplet_keys"]))) == len(sc["triplet_keys"])
    # the strike happened mid-run: parts were committed before it, most documents after it
    assert 0 < sc["committed_at_strike"] <= N_DOCS // 2, sc["committed_at_strike"]
    # the killed actor's held batch was lost and redone by another process
    lost = set(sc["lost_ids"])
    assert lost and lost.isdisjoint(sc["committed_ids_at_strike"])
    redone = {d for e in sc["actor_log"] if e["pid"] not in sc["killed_pids"] for d in e["ids"]}
    assert lost <= redone, f"lost documents never re-ran: {sorted(lost - redone)}"
    # Ray restarted the pool's actor (same actor, new process), it did not fail the job or add one
    workers = [a for a in sc["actors"] if "MapWorker" in a["class"]]
    assert len(workers) == 2 and not {a["pid"] for a in workers} & set(sc["killed_pids"]), workers
    # the progress tracker lives on the driver's node, out of reach of a lost worker node
    trackers = [a for a in sc["actors"] if a["class"] == "ProgressTracker"]
    assert trackers and all(a["node"] == report["head_node"] for a in trackers), trackers


def test_extraction_survives_a_killed_extractor_actor(report):
    sc = _scenario(report, "actor_kill")
    assert sc["killed_pid_gone"], "the actor process was not killed"
    _check_extraction(report, sc)


def test_extraction_survives_the_loss_of_a_worker_node(report):
    sc = _scenario(report, "node_loss")
    killed = sc["killed_node"]
    assert killed != report["head_node"] and sc["killed_node_dead"], sc["nodes_after"]
    assert sc["killed_pids_gone"], "actor processes of the removed node survived it"
    _check_extraction(report, sc)
    after = [e for e in sc["actor_log"] if e["t"] > sc["strike_time"]]
    assert after and all(e["node"] != killed for e in after), "work ran on the removed node after the strike"
    assert all(a["node"] != killed for a in sc["actors"] if "MapWorker" in a["class"])


def test_ray_train_resumes_from_its_checkpoint_after_losing_a_node(report):
    sc = _scenario(report, "train")
    killed = sc["killed_node"]
    assert killed != report["head_node"] and sc["killed_node_dead"]
    assert sc["committed_before_strike"] == 1  # the step-2 checkpoint
    attempts: dict[int, list[int]] = {}
    nodes: dict[int, set[str]] = {}
    for rank, step, pid, node, _ in sc["steps"]:
        if rank == 0:
            attempts.setdefault(pid, []).append(step)
            nodes.setdefault(pid, set()).add(node)
    assert len(attempts) == 2, attempts
    (first_pid, first), (second_pid, second) = attempts.items()
    assert first == [1, 2, 3] and nodes[first_pid] == {killed}
    assert second == [3, 4, 5, 6], f"after losing its node, rank 0 ran {second}: not resumed from step 2"
    assert killed not in nodes[second_pid]
    assert sc["resumed_from_steps"] == [2]
    assert sc["history_steps"] == [2, 4, 6]


# == the driver (runs in its own process: python tests/test_multinode_faults.py WORKDIR) ============
HEAD_CPUS, WORKER_CPUS, NUM_WORKERS = 1, 2, 3
SYSTEM_CONFIG = {
    # a dead raylet refuses the check at once: marked dead after 5 misses 1 s apart (default 3 s
    # apart); a live but busy one still has the default 10 s to answer each check
    "health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
    # no idle workers prestarted on every node of an already busy 2-core machine
    "enable_worker_prestart": False, "prestart_worker_first_driver": False,
    # reuse idle workers across the job's short tasks instead of killing and restarting them
    "idle_worker_killing_time_threshold_ms": 60_000,
}


def _append(path: str, obj: dict[str, Any]) -> None:
    with open(path, "a") as f:  # one short line per write: O_APPEND keeps lines whole
        f.write(json.dumps(obj) + "\n")


def _read_log(path: Path) -> list[dict[str, Any]]:
    """Complete lines only: the log may be read while an actor appends to it."""
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(x) for x in lines if x]


def _wait_for(cond, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def gated_extractor(log_path: str, gate_path: str, hold_after: int):
    """An ``Extractor`` that logs (pid, node, doc ids) per batch and, while ``gate_path`` does not
    exist, holds each result once it has returned ``hold_after`` documents."""
    from glidre_core.extraction.udf import Extractor

    class GatedExtractor(Extractor):
        def __call__(self, batch):
            import ray

            out = super().__call__(batch)
            ids = batch.column("doc_id").to_pylist()
            done = getattr(self, "_returned", 0)
            entry = {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "ids": ids,
                     "t": time.time()}
            held = done >= hold_after and not os.path.exists(gate_path)
            _append(log_path, {**entry, "held": held})
            if held:
                deadline = time.time() + 300
                while not os.path.exists(gate_path) and time.time() < deadline:
                    time.sleep(0.1)
            self._returned = done + len(ids)
            return out

    return GatedExtractor


def _ledger_ids(out: Path, live: bool = False) -> list[str]:
    """Document ids in the ledger; ``live``: while the job writes, skipping a part being written."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    for path in sorted((out / "documents").glob("*.parquet")):
        try:
            ids += pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist()
        except Exception:  # noqa: BLE001
            if not live:
                raise
    return ids


def run_extraction_scenario(work: Path, name: str, strike) -> dict[str, Any]:
    """One extraction run with ``strike(held_entry) -> info`` applied mid-run."""
    import ray
    import pyarrow.fs as pafs

    from extraction_support import base_values, triplet_keys
    from glidre_core.extraction import load_extract_config, pipeline, run_extraction

    base = work / name
    model_dir = work / "model"
    corpus = write_jsonl(base / "in" / "docs.jsonl", sample_records(N_DOCS))
    out, log, gate = base / "out", base / "actors.log", base / "gate"
    cfg = load_extract_config(None, values=base_values(
        model_dir, input=str(corpus.parent), output=str(out), batch_size=2, lines_per_block=2, docs_per_file=2,
        preprocess_num_cpus=1, progress_interval_s=5,
        **{"actors.min_size": 2, "actors.max_size": 2, "actors.num_cpus": 1.25, "actors.torch_threads": 1}))
    pipeline.Extractor = gated_extractor(str(log), str(gate), HOLD_AFTER)  # the driver only; pickled by value
    result: dict[str, Any] = {}

    def striker():
        try:
            held = _wait_for(lambda: _ledger_ids(out, live=True) and [e for e in _read_log(log) if e["held"]],
                             180, "a committed part and a holding actor")[0]
            committed = _ledger_ids(out, live=True)
            result.update(committed_at_strike=len(committed), committed_ids_at_strike=committed,
                          lost_ids=held["ids"], strike_time=time.time())
            result.update(strike(held))
        except Exception as exc:  # noqa: BLE001 - reported; the gate still opens so the run ends
            result["error"] = f"strike failed: {type(exc).__name__}: {exc}"
        finally:
            gate.touch()

    actors_before = {a["id"] for a in _actors(("MapWorker", "ProgressTracker"))}
    thread = threading.Thread(target=striker, daemon=True)
    thread.start()
    manifest = run_extraction(cfg)
    thread.join(timeout=60)
    triplets = read_table(pafs.LocalFileSystem(), str(out / "triplets"))
    result.update(
        manifest={k: manifest[k] for k in ("status", "reconciled", "docs_read", "docs_extracted", "docs_failed",
                                           "duplicate_doc_ids", "triplets_written")},
        ledger_ids=_ledger_ids(out), triplet_keys=triplet_keys(triplets) if triplets is not None else [],
        actor_log=_read_log(log),
        nodes_after={n["NodeID"]: n["Alive"] for n in ray.nodes()},
        actors=[a for a in _actors(("MapWorker", "ProgressTracker")) if a["id"] not in actors_before],
    )
    return result


def _actors(classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Ray's own record of the actors (state API): where each one (last) ran, and its pid."""
    from ray.util.state import list_actors

    return [{"id": a.actor_id, "class": a.class_name, "state": a.state, "node": a.node_id, "pid": a.pid}
            for a in list_actors(limit=1000, timeout=120, raise_on_missing_output=False)
            if any(c in (a.class_name or "") for c in classes)]


def _pid_gone(pid: int, timeout: float = 30) -> bool:
    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        return bool(_wait_for(gone, timeout, f"pid {pid} to exit"))
    except TimeoutError:
        return False


def _node_dead(node_id: str, timeout: float = 60) -> bool:
    import ray

    try:
        return bool(_wait_for(lambda: not {n["NodeID"]: n["Alive"] for n in ray.nodes()}.get(node_id, True),
                              timeout, f"node {node_id[:8]} to be marked dead", poll=0.5))
    except TimeoutError:
        return False


def _remove_node(cluster, node_id: str) -> None:
    node = next((n for n in cluster.worker_nodes if n.node_id == node_id), None)
    if node is None:
        raise RuntimeError(f"node {node_id} is not a worker node of this cluster")
    cluster.remove_node(node, allow_graceful=False)  # SIGKILL: raylet, object store, agents


def scenario_actor_kill(cluster, work: Path) -> dict[str, Any]:
    def strike(held):
        os.kill(held["pid"], signal.SIGKILL)
        return {"killed_pids": [held["pid"]], "killed_pid_gone": _pid_gone(held["pid"])}

    return run_extraction_scenario(work, "actor_kill", strike)


def scenario_node_loss(cluster, work: Path) -> dict[str, Any]:
    log = work / "node_loss" / "actors.log"

    def strike(held):
        node = held["node"]
        pids = sorted({e["pid"] for e in _read_log(log) if e["node"] == node})
        _remove_node(cluster, node)
        return {"killed_node": node, "killed_pids": pids, "killed_node_dead": _node_dead(node),
                "killed_pids_gone": all(_pid_gone(p) for p in pids)}

    return run_extraction_scenario(work, "node_loss", strike)


class TrainHold:
    """Step hook: logs ``rank step pid node``; on the first attempt, at step 3, rank 0 waits for
    the step-2 checkpoint to be committed and says so, then every rank holds until the gate opens
    (its node is removed meanwhile)."""

    def __init__(self, log: Path, ready: Path, gate: Path):
        self.log, self.ready, self.gate = str(log), str(ready), str(gate)

    def __call__(self, trainer, step: int) -> None:
        import ray
        import ray.train

        node = ray.get_runtime_context().get_node_id()
        _append(self.log, {"rank": trainer.rank, "step": step, "pid": os.getpid(), "node": node, "t": time.time()})
        if step != 3 or os.path.exists(self.gate):
            return
        if trainer.rank == 0:
            committed = ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            Path(self.ready + ".tmp").write_text(json.dumps({"node": node, "committed": len(committed)}))
            os.replace(self.ready + ".tmp", self.ready)  # the test never reads half a file
        deadline = time.time() + 300
        while not os.path.exists(self.gate) and time.time() < deadline:
            time.sleep(0.1)


def scenario_train(cluster, work: Path) -> dict[str, Any]:
    from test_ray_train import REDOCRED_DEV, tiny_training_config

    from glidre_core import ray_train

    base = work / "train"
    base.mkdir()
    hook = TrainHold(base / "steps.log", base / "ready", base / "gate")
    cfg = tiny_training_config(
        base, train={"path": REDOCRED_DEV, "format": "docred", "limit": 6}, dev_holdout=2, batch_size=1,
        epochs=6, max_steps=6, eval_every=2,
        scaling={"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_PACK"},
        storage={"path": str(base / "ray_storage"), "run_name": "node-loss", "max_failures": 1},
    )
    result: dict[str, Any] = {}

    def striker():
        try:
            ready = json.loads(_wait_for(lambda: Path(hook.ready).exists() and Path(hook.ready).read_text(), 240,
                                         "training to hold at step 3"))
            result["strike_time"] = time.time()
            _remove_node(cluster, ready["node"])
            result.update(killed_node=ready["node"], committed_before_strike=ready["committed"],
                          killed_node_dead=_node_dead(ready["node"]))
        except Exception as exc:  # noqa: BLE001
            result["error"] = f"strike failed: {type(exc).__name__}: {exc}"
        finally:
            Path(hook.gate).touch()

    thread = threading.Thread(target=striker, daemon=True)
    thread.start()
    t0 = time.time()
    out = ray_train.train(cfg, step_hook=hook)
    thread.join(timeout=60)
    result.update(
        steps=[[e["rank"], e["step"], e["pid"], e["node"], e["t"]] for e in _read_log(base / "steps.log")],
        started=t0, ended=time.time(),
        resumed_from_steps=out.resumed_from_steps, history_steps=[r["step"] for r in out.history],
    )
    return result


def driver(work: Path, only: list[str] | None = None) -> None:
    import logging
    import socket

    import ray
    from ray.cluster_utils import Cluster

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("multinode")
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"timings": timings}
    t0 = time.time()
    save_tiny_model(work / "model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard_port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": HEAD_CPUS, "dashboard_port": dashboard_port,
        "include_dashboard": True, "_system_config": SYSTEM_CONFIG})
    try:
        for _ in range(NUM_WORKERS):
            cluster.add_node(num_cpus=WORKER_CPUS, wait=False)
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
        report["head_node"] = ray.get_runtime_context().get_node_id()
        assert report["head_node"] == cluster.head_node.node_id, "the driver is not on the head node"
        timings["cluster_start"] = time.time() - t0
        for name, fn in (("actor_kill", scenario_actor_kill), ("node_loss", scenario_node_loss),
                         ("train", scenario_train)):
            if only and name not in only:
                continue
            t = time.time()
            log.info("=== scenario %s", name)
            try:
                report[name] = fn(cluster, work)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                log.exception("scenario %s failed", name)
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
            timings[name] = time.time() - t
            (work / "report.json").write_text(json.dumps(report))
    finally:
        t = time.time()
        ray.shutdown()
        cluster.shutdown()
        timings["shutdown"] = time.time() - t
        (work / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    driver(Path(sys.argv[1]), sys.argv[2:])  # optional scenario names: run only those (debugging)
