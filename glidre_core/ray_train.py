"""Training on Ray Train (``TorchTrainer``), with MLflow tracking and model registration.

One entry point, :func:`train`, serves ``glidre train``, ``jobs/train.py`` and the tests:

* ``scaling.num_workers: 0`` runs the loop in this process (no Ray, no checkpoints): the
  original single-process behaviour, plus MLflow when configured.
* ``scaling.num_workers >= 1`` runs :func:`train_loop_per_worker` on Ray Train workers. DDP
  (gloo on CPU, nccl on GPU) averages gradients; each worker trains on its own shard of the
  training documents (read from a local path or ``s3://``); every evaluation point is a
  checkpoint (safetensors + JSON, see :mod:`glidre_core.training.checkpoint`) persisted by Ray to
  ``storage.path`` (local or ``s3://``); ``FailureConfig(max_failures)`` restarts the worker group
  from the last checkpoint when a worker dies; starting the same run (same ``storage.path`` and
  run name) again resumes it, and a finished run is not trained again.

Rank 0 alone evaluates, logs to MLflow (plain client calls: Train V2 rejects Tune callbacks) and
registers the best model. The driver opens the MLflow run so that a resumed run keeps one history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glidre_core.training.checkpoint import BEST_DIR, STATE_FILE
from glidre_core.training.config import StorageSection, TrainingConfig

logger = logging.getLogger(__name__)

FINAL_EVAL_FILE = "final_eval.json"
#: ``hook(trainer, step)`` called in the worker after every optimizer step (progress reporting,
#: tests; ``trainer.rank`` says which worker). It travels to the workers with cloudpickle.
StepHook = Callable[[Any, int], None]


@dataclass
class TrainRunResult:
    """What a training run produced (the same for in-process and Ray runs)."""

    run_name: str
    best_dir: Path
    best_f1: float
    best_threshold: float
    history: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, Any] | None = None
    mlflow_run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    resumed_from_steps: list[int] = field(default_factory=list)
    checkpoint_path: str | None = None

    def summary(self) -> dict[str, Any]:
        out = {
            "run_name": self.run_name, "best_dir": str(self.best_dir), "dev_f1": self.best_f1,
            "threshold": self.best_threshold, "mlflow_run_id": self.mlflow_run_id,
            "registered": f"models:/{self.model_name}/{self.model_version}" if self.model_version else None,
            "resumed_from_steps": self.resumed_from_steps, "checkpoint": self.checkpoint_path,
        }
        if self.final_eval:
            out["final_eval"] = {k: self.final_eval.get(k) for k in ("f1", "ign_f1", "precision", "recall", "docs")}
        return out


# -- paths and filesystems ----------------------------------------------------------------------
def is_uri(path: str) -> bool:
    return "://" in path


def run_name_for(cfg: TrainingConfig) -> str:
    return cfg.storage.run_name or Path(cfg.output_dir).name


def s3_filesystem(storage: StorageSection):
    """The one explicit pyarrow S3 filesystem for data and checkpoints (the same builder as the
    extraction job: pyarrow ignores ``AWS_ENDPOINT_URL``, so the endpoint comes from config or
    is read from the environment here); pickled to every worker."""
    from glidre_core.extraction.config import StorageConfig
    from glidre_core.extraction.storage import build_s3_filesystem

    return build_s3_filesystem(StorageConfig(endpoint_url=storage.s3_endpoint_url, region=storage.s3_region))


def uses_s3(cfg: TrainingConfig) -> bool:
    paths = [cfg.storage.path, cfg.train.path] + ([cfg.dev.path] if cfg.dev else [])
    return any(p.startswith("s3://") for p in paths)


def _filesystem_for(uri: str, storage: StorageSection, s3_fs=None):
    if uri.startswith("s3://"):
        return (s3_fs or s3_filesystem(storage)), uri[len("s3://"):]
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(uri)


def fetch_data(cfg: TrainingConfig, directory: Path, s3_fs=None) -> TrainingConfig:
    """A copy of ``cfg`` whose ``s3://`` (or other URI) data files were downloaded to
    ``directory`` (through ``s3_fs``, the driver's filesystem, when given); local paths are left
    alone."""
    updates = {}
    for key in ("train", "dev"):
        data = getattr(cfg, key)
        if data is None or not is_uri(data.path):
            continue
        fs, path = _filesystem_for(data.path, cfg.storage, s3_fs)
        local = directory / f"{key}_{Path(path).name}"
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        logger.info("fetched %s to %s", data.path, local)
        updates[key] = data.model_copy(update={"path": str(local)})
    return cfg.model_copy(update=updates) if updates else cfg


def absolutize(cfg: TrainingConfig) -> TrainingConfig:
    """Local paths made absolute: Ray Train workers run in another working directory."""
    def fix(p: str) -> str:
        return p if is_uri(p) else str(Path(p).expanduser().resolve())

    updates: dict[str, Any] = {"output_dir": fix(cfg.output_dir)}
    for key in ("train", "dev"):
        data = getattr(cfg, key)
        if data is not None:
            updates[key] = data.model_copy(update={"path": fix(data.path)})
    updates["storage"] = cfg.storage.model_copy(update={"path": fix(cfg.storage.path)})
    if cfg.mlflow is not None:
        from glidre_core.tracking import resolve_tracking_uri

        updates["mlflow"] = cfg.mlflow.model_copy(update={"tracking_uri": resolve_tracking_uri(cfg.mlflow.tracking_uri)})
    return cfg.model_copy(update=updates)


def eval_data_name(cfg: TrainingConfig) -> str:
    if cfg.dev is not None:
        return f"{cfg.dev.path} (limit {cfg.dev.limit})" if cfg.dev.limit else cfg.dev.path
    return f"{cfg.train.path} holdout {cfg.dev_holdout} seed {cfg.seed}"


# -- sessions: where checkpoints come from and go to ---------------------------------------------
class LocalSession:
    """In-process run: one rank, no persisted checkpoints (``num_workers: 0``)."""

    rank, world_size = 0, 1

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)

    def latest_checkpoint(self, directory: Path) -> Path | None:
        return None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        pass

    persists_checkpoints = False


class RaySession:
    """Inside a Ray Train worker."""

    persists_checkpoints = True

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def latest_checkpoint(self, directory: Path) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        return Path(ckpt.to_directory(str(directory)))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train
        from ray.train import Checkpoint

        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None)


def _numeric(record: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (record or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# -- the per-worker loop -------------------------------------------------------------------------
def run_worker(
    cfg: TrainingConfig,
    session,
    handle=None,
    meta: dict[str, Any] | None = None,
    step_hook: StepHook | None = None,
    s3_fs=None,
) -> dict[str, Any]:
    """Train on this worker (or in this process), then, on rank 0, evaluate the best model, log
    the final artifacts and register it. Returns a summary dict (rank 0's is the meaningful one)."""
    from glidre_core.tracking import RunTracker
    from glidre_core.training.checkpoint import load_train_state
    from glidre_core.training.trainer import Trainer

    meta = dict(meta or {})
    rank = session.rank
    requested = cfg  # what the user asked for (logged); local copies and scratch dirs below are not
    with tempfile.TemporaryDirectory(prefix="glidre-worker-") as tmp:
        work = Path(tmp)
        cfg = fetch_data(cfg, work, s3_fs)
        if session.persists_checkpoints:
            # the durable copies are in the checkpoints; the best model is scratch until then
            cfg = cfg.model_copy(update={"output_dir": str(work / "out")})
        resume_dir = session.latest_checkpoint(work / "resume")
        resumed: list[int] = []
        if resume_dir is not None:
            state, _ = load_train_state(resume_dir)
            if (resume_dir / FINAL_EVAL_FILE).exists():
                logger.info("run %s is already finished (checkpoint at step %d): nothing to train", meta.get("run_name"), state.step)
                return {"finished_before": True, "step": state.step}
            resumed = list(state.extra.get("resumed_from_steps", [])) + [state.step]
            logger.info("rank %d resumes from the checkpoint at step %d", rank, state.step)
        tracker = RunTracker(handle) if (handle is not None and rank == 0) else None
        if tracker is not None:
            if resume_dir is None:
                tracker.log_config(requested, tags={"glidre.git_commit": meta.get("git_commit", "unknown"),
                                              "glidre.world_size": str(session.world_size)})
            else:
                tracker.client.set_tag(tracker.run_id, "glidre.resumed_from_steps", json.dumps(resumed))

        def on_checkpoint(trainer: Trainer, record: dict[str, Any] | None) -> None:
            with tempfile.TemporaryDirectory(prefix="glidre-ckpt-", dir=work) as d:
                trainer.save_checkpoint(d, extra={"resumed_from_steps": resumed})
                session.report({"step": trainer.step_now(), **_numeric(record)}, Path(d))

        on_step = (lambda step: step_hook(trainer, step)) if step_hook else None
        trainer = Trainer(
            cfg, on_eval=tracker.log_eval if tracker else None, rank=rank, world_size=session.world_size,
            device=session.device, resume_from=resume_dir,
            on_checkpoint=on_checkpoint if session.persists_checkpoints else None, on_step=on_step,
        )
        result = trainer.train()
        summary: dict[str, Any] = {
            "best_f1": result.best_f1, "best_threshold": result.best_threshold, "history": result.history,
            "resumed_from_steps": resumed,
        }
        final_eval = None
        if rank == 0:
            # names, hash and tags describe the requested config (the s3:// URI, not a local copy)
            final_eval, registered = finalize(requested, trainer, result, tracker, meta)
            summary.update(final_eval=final_eval, **registered)
        # the last checkpoint marks the run finished (a restart of the same run trains no more)
        if session.persists_checkpoints:
            with tempfile.TemporaryDirectory(prefix="glidre-ckpt-", dir=work) as d:
                trainer.save_checkpoint(d, extra={"resumed_from_steps": resumed, **summary_extra(summary)})
                if rank == 0:
                    (Path(d) / FINAL_EVAL_FILE).write_text(json.dumps(final_eval, indent=2, default=str))
                session.report({"step": trainer.step_now(), "finished": 1.0, **_numeric(final_eval and {
                    f"final_{k}": final_eval[k] for k in ("f1", "ign_f1", "precision", "recall")})}, Path(d))
        elif rank == 0:
            out = Path(cfg.output_dir)
            (out / FINAL_EVAL_FILE).write_text(json.dumps(final_eval, indent=2, default=str))
        if tracker is not None:
            tracker.finish("FINISHED")
        summary["best_dir"] = str(result.best_dir)
        return summary


def summary_extra(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("mlflow_run_id", "model_name", "model_version") if summary.get(k)}


def finalize(cfg: TrainingConfig, trainer, result, tracker, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0 after training: evaluate the best model on dev (the recorded evaluation), log the
    plots and JSON, register the model (once per MLflow run).

    The evaluation is the trainer's own dev scoring (:func:`glidre_core.evaluation.evaluate_dev`
    on the candidates of :func:`glidre_core.evaluation.dev_predictor`, the checkpoint's label
    set) of the reloaded best checkpoint at the threshold saved with it, in the trainer's
    precision (``bf16`` autocast): its F1 is the dev F1 the trainer recorded when it chose that
    checkpoint, not a second number on other labels. The trainer scores its weights rounded to
    ``save_dtype`` as they are saved (:meth:`GLiDRE.weights_as_saved`), so the two agree in
    float16 too (before that, some 10 of 1,790 dev predictions flipped in benchmarks/llm_loop.sh's
    fine-tuning). The trainer's cached frozen layers are computed apart, so a score next to the
    threshold can still flip in principle."""
    from glidre_core.evaluation import dev_predictor, evaluate_dev
    from glidre_core.modeling import GLiDRE
    from glidre_core.tracking import config_hash, documents_fingerprint

    if not (result.best_dir / "config.json").exists():
        raise RuntimeError(f"training produced no best model in {result.best_dir}")
    best = GLiDRE.from_pretrained(result.best_dir, device=trainer.device)
    with trainer.autocast():
        final_eval = evaluate_dev(dev_predictor(best, batch_size=cfg.batch_size), trainer.dev_docs,
                                  train_facts=trainer.dev_train_facts())
    curve = final_eval.pop("curve")
    final_eval["unseen_label_threshold"] = getattr(best.config, "unseen_label_threshold", None)
    if not result.history:
        best_step = None
    elif cfg.refit is not None:  # a refit keeps its last weights (RefitSection)
        best_step = result.history[-1]["step"]
        final_eval["dev_seen_in_training"] = True
    else:
        best_step = max(result.history, key=lambda r: r["dev_f1"])["step"]
    eval_fp = documents_fingerprint(trainer.dev_docs)
    final_eval.update({
        "eval_data": {"name": eval_data_name(cfg), "fingerprint": eval_fp, "docs": len(trainer.dev_docs)},
        "train_data": {"path": cfg.train.path, "fingerprint": documents_fingerprint(trainer.all_train_docs),
                       "docs": len(trainer.all_train_docs)},
        "best_step": best_step, "threshold_curve": curve, "config_hash": config_hash(cfg),
        "git_commit": meta.get("git_commit", "unknown"),
    })
    registered: dict[str, Any] = {}
    if tracker is not None:
        tracker.log_final(result.history, final_eval, curve)
        registered["mlflow_run_id"] = tracker.run_id
        name = cfg.mlflow.register_as if cfg.mlflow else None
        if name:
            registered.update(register_best(tracker, name, result.best_dir, final_eval, cfg, meta))
    return final_eval, registered


def register_best(tracker, name: str, best_dir: Path, final_eval: dict[str, Any], cfg: TrainingConfig,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """Register the best model once per MLflow run (a finalize repeated after a crash reuses it)."""
    from glidre_core import registry

    run = tracker.client.get_run(tracker.run_id)
    done = run.data.tags.get("glidre.registered_version")
    if done and run.data.tags.get("glidre.registered_model") == name:
        logger.info("run %s already registered %s version %s", tracker.run_id, name, done)
        return {"model_name": name, "model_version": done}
    tags = {
        "glidre.data": cfg.train.path,
        "glidre.data_fingerprint": final_eval["train_data"]["fingerprint"],
        "glidre.config_hash": final_eval["config_hash"],
        "glidre.git_commit": meta.get("git_commit", "unknown"),
        "glidre.run_name": meta.get("run_name", ""),
        "glidre.best_step": str(final_eval.get("best_step")),
        **registry.evaluation_tags(final_eval, final_eval["eval_data"]["name"], final_eval["eval_data"]["fingerprint"]),
    }
    version = registry.register_model(tracker.handle, best_dir, name, tags=tags,
                                      description=f"run {meta.get('run_name')} dev F1 {final_eval['f1']:.4f}")
    tracker.client.set_tag(tracker.run_id, "glidre.registered_model", name)
    tracker.client.set_tag(tracker.run_id, "glidre.registered_version", str(version.version))
    return {"model_name": name, "model_version": str(version.version)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train entry point (module-level, so workers import it instead of unpickling code)."""
    import logging as _logging

    from glidre_core.tracking import RunHandle

    _logging.basicConfig(level=_logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainingConfig.model_validate(config["cfg"])
    handle = RunHandle(**config["mlflow"]) if config.get("mlflow") else None
    run_worker(cfg, RaySession(), handle, config.get("meta"), config.get("step_hook"), config.get("s3_filesystem"))


# -- the driver ----------------------------------------------------------------------------------
def train(
    cfg: TrainingConfig,
    *,
    run_name: str | None = None,
    step_hook: StepHook | None = None,
    ray_address: str | None = None,
) -> TrainRunResult:
    """Train as ``cfg`` says (in-process or on Ray Train) and return what was produced."""
    from glidre_core.tracking import git_commit, open_run

    cfg = absolutize(cfg)
    if run_name:
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"run_name": run_name})})
    name = run_name_for(cfg)
    meta = {"git_commit": git_commit(), "run_name": name}
    handle = None
    if cfg.mlflow is not None:
        handle = open_run(cfg.mlflow, name, tags={"glidre.git_commit": meta["git_commit"]})
        if handle.tracking_uri.startswith("sqlite:") and os.environ.get("RAY_ADDRESS"):
            logger.warning(
                "MLflow tracking URI %s is a local file: on a multi-node cluster rank 0 may run on "
                "another node; set mlflow.tracking_uri or MLFLOW_TRACKING_URI to a server", handle.tracking_uri,
            )
    try:
        if cfg.scaling.num_workers == 0:
            device = "cuda" if cfg.scaling.use_gpu else "cpu"
            out = run_worker(cfg, LocalSession(device), handle, meta, step_hook)
            result = TrainRunResult(
                name, Path(out["best_dir"]), out["best_f1"], out["best_threshold"], out["history"],
                out.get("final_eval"), out.get("mlflow_run_id"), out.get("model_name"), out.get("model_version"),
            )
        else:
            result = _fit_with_ray(cfg, name, handle, meta, step_hook, ray_address)
    except BaseException:
        if handle is not None:
            from glidre_core.tracking import client

            client(handle.tracking_uri).set_terminated(handle.run_id, status="FAILED")
        raise
    if handle is not None:
        from glidre_core.tracking import client

        # also closes a reopened run whose workers found it already finished
        client(handle.tracking_uri).set_terminated(handle.run_id, status="FINISHED")
    return result


def _storage(cfg: TrainingConfig, s3_fs) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: with an explicit filesystem Ray wants
    the path without its scheme."""
    if cfg.storage.path.startswith("s3://"):
        return cfg.storage.path[len("s3://"):], s3_fs
    return cfg.storage.path, None


def _fit_with_ray(cfg: TrainingConfig, name: str, handle, meta, step_hook, ray_address) -> TrainRunResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), log_to_driver=True)
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker or 1
    # one S3 filesystem, built here from config + the driver's credentials, pickled to workers
    s3_fs = s3_filesystem(cfg.storage) if uses_s3(cfg) else None
    storage_path, storage_fs = _storage(cfg, s3_fs)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "mlflow": dataclasses.asdict(handle) if handle else None,
            "meta": meta,
            "step_hook": step_hook,
            "s3_filesystem": s3_fs,
        },
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources,
            placement_strategy=sc.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.num_to_keep),
        ),
    )
    fit = trainer.fit()
    if fit.checkpoint is None:
        raise RuntimeError(f"run {name}: Ray Train returned no checkpoint")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glidre-result-") as tmp:
        local = Path(fit.checkpoint.to_directory(tmp))
        state = json.loads((local / STATE_FILE).read_text())
        if (local / BEST_DIR).is_dir():
            shutil.copytree(local / BEST_DIR, out / "best", dirs_exist_ok=True)
        final_eval = json.loads((local / FINAL_EVAL_FILE).read_text()) if (local / FINAL_EVAL_FILE).exists() else None
    (out / "history.json").write_text(json.dumps(state["history"], indent=1))
    if final_eval is not None:
        (out / FINAL_EVAL_FILE).write_text(json.dumps(final_eval, indent=2, default=str))
    extra = state.get("extra") or {}
    return TrainRunResult(
        run_name=name, best_dir=out / "best", best_f1=state["best_f1"], best_threshold=state["best_threshold"],
        history=state["history"], final_eval=final_eval, mlflow_run_id=extra.get("mlflow_run_id") or (handle.run_id if handle else None),
        model_name=extra.get("model_name"), model_version=extra.get("model_version"),
        resumed_from_steps=list(extra.get("resumed_from_steps", [])), checkpoint_path=fit.checkpoint.path,
    )
