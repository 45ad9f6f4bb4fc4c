"""One trial: train with the in-process :class:`~glidre_core.training.trainer.Trainer`, report
every dev evaluation to Tune (so ASHA can stop it), then evaluate the dev-chosen checkpoint on
held-out data and report that once, last.

:func:`run_trial` is the Tune function trainable. It runs in a Tune actor whose working
directory is the trial directory, which is why every path reaches it resolved
(:func:`~glidre_core.experiments.config.trial_training_dict`).

Checkpoints (``storage.checkpoint_trials``): each dev evaluation is a Tune checkpoint of the
training loop (weights, optimizer, RNG, position; :mod:`glidre_core.training.checkpoint`), so a
trial cut short by an interruption resumes at its last evaluation. The final report carries a
small checkpoint holding only the trial's result (and its best model with
``storage.keep_models``); with ``num_to_keep=1`` it replaces the training checkpoint, so a finished
trial leaves kilobytes on disk, and a finished trial that is somehow started again re-reports its
result instead of training.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from glidre_core.experiments.config import ExperimentConfig, build_training_config, describe_trial
from glidre_core.experiments.mlflow_runs import STATUS_TAG

logger = logging.getLogger(__name__)

TRIAL_RESULT_FILE = "trial_result.json"
MODEL_SUBDIR = "model"
#: final-report keys a trial's result always has (the report and tests read them)
DONE_KEY = "trial_done"


def numeric(record: dict[str, Any] | None) -> dict[str, float]:
    """The numeric values of a record (what Tune and MLflow take as metrics)."""
    return {
        k: float(v) for k, v in (record or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # no NaN
    }


def eval_metrics(record: dict[str, Any], best: float) -> dict[str, float]:
    """What one dev evaluation reports: the record's numbers and the best dev score so far."""
    return {**numeric(record), "best_dev_f1": max(best, float(record["dev_f1"]))}


def final_metrics(history: list[dict[str, Any]], best_f1: float, held_out: dict[str, Any] | None,
                  extra: dict[str, float]) -> dict[str, float]:
    """The last report: the dev numbers of the chosen checkpoint (``dev_f1`` is its dev score,
    so ``dev_f1`` and ``best_dev_f1`` agree here), then ``test_*`` held-out numbers."""
    chosen = max(history, key=lambda r: r["dev_f1"]) if history else {}
    out = {k: v for k, v in numeric(chosen).items() if k.startswith("dev_")}
    out.update(dev_f1=best_f1, best_dev_f1=best_f1, best_step=float(chosen.get("step", 0)), **extra)
    if held_out is not None:
        for key in ("f1", "ign_f1", "precision", "recall", "auc", "docs", "gold_facts"):
            value = held_out.get(key)
            if isinstance(value, (int, float)) and value == value:
                out[f"test_{key}"] = float(value)
    out[DONE_KEY] = 1.0
    return out


def run_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """Tune function trainable. ``config["trial"]`` is ``{"arm", "params", "seed"}``;
    ``payload`` (``tune.with_parameters``) carries the experiment config, the resolved base
    training config, the driver's working directory and the MLflow parent run."""
    import torch
    from ray import tune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exp = ExperimentConfig.model_validate(payload["experiment"])
    trial = config["trial"]
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    device = "cuda" if exp.resources.gpu > 0 and torch.cuda.is_available() else "cpu"

    with tempfile.TemporaryDirectory(prefix="glidre-trial-") as tmp:
        work = Path(tmp)
        checkpoint = tune.get_checkpoint()
        resume_dir = None
        if checkpoint is not None:
            local = Path(checkpoint.to_directory(str(work / "restored")))
            if (local / TRIAL_RESULT_FILE).exists():
                saved = json.loads((local / TRIAL_RESULT_FILE).read_text())
                logger.info("trial %s finished before: re-reporting its result", trial_name)
                tune.report(saved["metrics"])
                return
            resume_dir = local
        cfg = build_training_config(payload["base"], exp, trial, payload["base_dir"], str(work / "out"))
        tracker = _tracker(payload.get("parent"), trial_id, trial_name, trial)
        try:
            metrics, evaluation = _train_and_evaluate(exp, cfg, trial, device, work, resume_dir, tracker)
        except SystemExit:
            # how Tune stops a trial (ASHA, an interrupted experiment): report() exits the thread
            if tracker is not None:
                tracker.client.set_tag(tracker.run_id, STATUS_TAG, "stopped")
                tracker.finish("KILLED")
            raise
        except BaseException:
            if tracker is not None:
                tracker.client.set_tag(tracker.run_id, STATUS_TAG, "error")
                tracker.finish("FAILED")
            raise
        final_dir = work / "final"
        final_dir.mkdir()
        (final_dir / TRIAL_RESULT_FILE).write_text(json.dumps(
            {"trial": trial, "metrics": metrics, "evaluation": evaluation}, indent=1, default=str))
        if exp.storage.keep_models:
            shutil.copytree(work / "out" / "best", final_dir / MODEL_SUBDIR)
        if tracker is not None:
            _log_final(tracker, metrics, evaluation)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(final_dir)))


def _tracker(parent: dict[str, Any] | None, trial_id: str, trial_name: str, trial: dict[str, Any]):
    if not parent:
        return None
    from glidre_core.experiments.mlflow_runs import open_child_run
    from glidre_core.tracking import RunHandle, RunTracker

    tags = {"glidre.trial": describe_trial(trial), "glidre.seed": str(trial["seed"]), STATUS_TAG: "running"}
    if trial.get("arm") is not None:
        tags["glidre.arm"] = str(trial["arm"])
    handle = open_child_run(RunHandle(**parent), trial_id, trial_name, tags)
    tracker = RunTracker(handle)
    if handle.resumed:
        tracker.client.set_tag(handle.run_id, STATUS_TAG, "running")
    return tracker


def _train_and_evaluate(exp: ExperimentConfig, cfg, trial: dict[str, Any], device: str, work: Path,
                        resume_dir: Path | None, tracker) -> tuple[dict[str, float], dict[str, Any] | None]:
    from ray import tune

    from glidre_core.modeling import GLiDRE
    from glidre_core.training.checkpoint import load_train_state
    from glidre_core.training.trainer import Trainer

    start = time.perf_counter()
    best = -1.0
    if resume_dir is not None:
        state, _ = load_train_state(resume_dir)
        best = state.best_f1
        logger.info("trial resumes from its checkpoint at step %d", state.step)
    if tracker is not None and not tracker.handle.resumed:
        tracker.log_config(cfg, tags={"glidre.trial_params": json.dumps(trial, default=str)})

    def on_eval(record: dict[str, Any]) -> None:
        nonlocal best
        if tracker is not None:
            tracker.log_eval(record)
        metrics = eval_metrics(record, best)
        best = metrics["best_dev_f1"]
        if not exp.storage.checkpoint_trials:
            tune.report(metrics)

    def on_checkpoint(trainer: Trainer, record: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory(prefix="glidre-ckpt-", dir=work) as d:
            trainer.save_checkpoint(d)
            # ``best`` already includes this record (on_eval ran first)
            tune.report(eval_metrics(record or {"dev_f1": best}, best), checkpoint=tune.Checkpoint.from_directory(d))

    trainer = Trainer(
        cfg, on_eval=on_eval, device=device, resume_from=resume_dir,
        on_checkpoint=on_checkpoint if exp.storage.checkpoint_trials else None,
    )
    result = trainer.train()
    train_minutes = (time.perf_counter() - start) / 60
    evaluation = None
    if exp.evaluate is not None:
        from glidre_core.experiments.heldout import evaluate_held_out

        if not (result.best_dir / "config.json").exists():
            raise RuntimeError(f"trial {describe_trial(trial)}: training saved no best model")
        model = GLiDRE.from_pretrained(result.best_dir, device=device)
        evaluation = evaluate_held_out(model, exp.evaluate, trainer.all_train_docs)
    extra = {
        "train_docs": float(len(trainer.all_train_docs)), "dev_docs": float(len(trainer.dev_docs)),
        "labels": float(len(trainer.labels)), "steps": float(trainer.step_now()),
        "train_minutes": train_minutes, "minutes": (time.perf_counter() - start) / 60,
    }
    if trainer.unseen_calibration is not None:
        extra.update(dev_unseen_threshold=trainer.unseen_calibration["threshold"],
                     dev_unseen_f1=trainer.unseen_calibration["dev_f1"])
    return final_metrics(result.history, result.best_f1, evaluation, extra), evaluation


def _log_final(tracker, metrics: dict[str, float], evaluation: dict[str, Any] | None) -> None:
    import time as _time

    from mlflow.entities import Metric

    ts = int(_time.time() * 1000)
    step = int(metrics.get("steps", 0))
    tracker.client.log_batch(tracker.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
    if evaluation is not None:
        tracker.log_json(evaluation, "evaluation/held_out.json")
    tracker.client.set_tag(tracker.run_id, STATUS_TAG, "done")
    tracker.finish("FINISHED")
