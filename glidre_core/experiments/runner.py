"""Running an experiment on Ray Tune, resuming it, and writing its results table.

Resume. The experiment lives in ``storage.path/name`` (Tune's experiment state, every trial's
results and checkpoints) next to ``glidre_experiment.json`` (the config hash and the MLflow
parent run). Running the same experiment again, after Ctrl+C, a crash or a trial budget, calls
``Tuner.restore``: finished trials are kept as they are (never trained again), unfinished ones
continue (from their last checkpoint with ``storage.checkpoint_trials``, else from the start),
failed ones run again (``storage.retry_errored``), and pending ones start. A finished experiment
run again only rewrites its report. A restore with a different config is refused: results of
two configs would be mixed in one table (``--overwrite`` starts over).

Trial budget (``max_trials``): stop after that many trials have ended in this invocation, the
way Ctrl+C stops Tune (running trials are interrupted, the state is saved), so that a long
experiment can be run in parts on a shared machine. Tune only stops *resumably* on
SIGINT/SIGUSR1: its own stoppers mark the remaining trials as terminated, and a restore would
then never run them. The budget therefore raises SIGUSR1 in the driver, which Tune handles.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from glidre_core.experiments.config import (
    ExperimentConfig,
    ExperimentConfigError,
    build_training_config,
    describe_trial,
    expand_trials,
    load_base,
    resolve_paths,
)
from glidre_core.experiments.report import TrialRow, build_report, write_report
from glidre_core.experiments.trial import DONE_KEY, MODEL_SUBDIR, run_trial

logger = logging.getLogger(__name__)

STATE_FILE = "glidre_experiment.json"


@dataclass
class ExperimentOutcome:
    """What a call of :func:`run_experiment` did."""

    name: str
    path: Path
    report: dict[str, Any]
    json_path: Path
    markdown_path: Path
    restored: bool
    interrupted: bool
    budget_reached: bool
    parent_run_id: str | None
    seconds: float


# -- trial budget ------------------------------------------------------------------------------------
@dataclass
class _Budget:
    limit: int | None
    ended: int = 0
    fired: bool = False


#: experiment path -> this process's budget for it. The callback below is pickled into Tune's
#: experiment state and restored from there, so it carries only the key, and each invocation
#: sets (or clears) the limit here.
_BUDGETS: dict[str, _Budget] = {}


class TrialBudget(Callback):
    """Driver-side Tune callback: counts trials that end (finished, stopped or failed) and, at
    this invocation's budget, stops Tune the resumable way (SIGUSR1, see the module docstring).

    Module-level on purpose: Tune pickles callbacks into its experiment state and unpickles them
    on restore, so the class must be importable (a class pickled by value would also carry a
    stale copy of ``_BUDGETS``)."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended()

    def _ended(self) -> None:
        budget = _BUDGETS.get(self.key)
        if budget is None or budget.limit is None or budget.fired:
            return
        budget.ended += 1
        if budget.ended < budget.limit:
            return
        budget.fired = True
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            logger.warning("trial budget reached but Tune's stop handler is not installed: running on")
            return
        logger.info("trial budget of %d reached: stopping (rerun to continue)", budget.limit)
        signal.raise_signal(signal.SIGUSR1)


# -- naming ----------------------------------------------------------------------------------------
def trial_name(trial) -> str:
    """Readable trial names (the MLflow child run names): arm, values, seed, Tune's index."""
    t = trial.config.get("trial", {})
    parts = [str(t["arm"])] if t.get("arm") is not None else []
    for key, value in (t.get("params") or {}).items():
        short = key.rsplit(".", 1)[-1]
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    parts.append(f"s{t.get('seed')}")
    return ",".join(parts) + f"_{trial.trial_id.rsplit('_', 1)[-1]}"


def trial_dirname(trial) -> str:
    """Short trial directories (Tune's defaults embed every value in the path)."""
    return f"trial_{trial.trial_id}"


# -- building the Tuner -----------------------------------------------------------------------------------
def build_scheduler(cfg: ExperimentConfig):
    """ASHA (or None): stops trials whose dev score at a rung is in the bottom of their peers."""
    if cfg.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = cfg.asha
    return ASHAScheduler(time_attr="training_iteration", max_t=a.max_t, grace_period=a.grace_period,
                         reduction_factor=a.reduction_factor, brackets=a.brackets)


def build_search(cfg: ExperimentConfig) -> tuple[dict[str, Any], Any, int]:
    """(param_space, search_alg or None, num_samples) for Tune.

    Grid and random search enumerate their trials here (:func:`expand_trials`) and hand Tune one
    ``grid_search`` over them; Optuna gets the distributions and proposes."""
    from ray import tune

    if cfg.search != "optuna":
        return {"trial": tune.grid_search(expand_trials(cfg))}, None, 1
    try:
        from ray.tune.search.optuna import OptunaSearch
        import optuna  # noqa: F401
    except ImportError as exc:
        raise ExperimentConfigError(
            "search: optuna needs the optional extra: pip install -e '.[optuna]'"
        ) from exc
    space: dict[str, Any] = {"params": {k: p.tune_domain() for k, p in cfg.space.items()}, "seed": cfg.seeds[0]}
    space["arm"] = tune.choice(list(cfg.arms)) if cfg.arms else None
    # metric and mode come from TuneConfig (Tune refuses them in both places)
    searcher = OptunaSearch(seed=cfg.search_seed)
    return {"trial": space}, searcher, cfg.num_samples


def validate_trials(cfg: ExperimentConfig, base: dict[str, Any], base_dir: str) -> int:
    """Build every trial's training config before anything starts (an invalid value fails here,
    naming the trial, not minutes later in an actor). Optuna: one probe, at the low edge of every
    distribution. ``cfg`` has its evaluation path resolved already."""
    if cfg.search == "optuna":
        probe = {"arm": next(iter(cfg.arms), None), "seed": cfg.seeds[0], "params": {
            k: (p.choice[0] if p.choice is not None else (p.loguniform or p.uniform)[0]) for k, p in cfg.space.items()
        }}
        trials = [probe]
    else:
        trials = expand_trials(cfg)
    for t in trials:
        tc = build_training_config(base, cfg, t, base_dir, "unused")
        for data in [tc.train, *([tc.dev] if tc.dev else []), *tc.extra_train, *tc.extra_dev]:
            if not Path(data.path).exists() and "://" not in data.path:
                raise ExperimentConfigError(f"trial {describe_trial(t)}: no such data file {data.path}")
    if cfg.evaluate is not None and not Path(cfg.evaluate.data.path).exists():
        raise ExperimentConfigError(f"evaluate.data.path: no such file {cfg.evaluate.data.path}")
    return len(trials) if cfg.search != "optuna" else cfg.num_samples


def _resolved_experiment(cfg: ExperimentConfig, base_dir: str) -> ExperimentConfig:
    """``cfg`` with its evaluation data path absolute (trials run in their own directories)."""
    if cfg.evaluate is None:
        return cfg
    path = resolve_paths({"train": {"path": cfg.evaluate.data.path}}, base_dir)["train"]["path"]
    data = cfg.evaluate.data.model_copy(update={"path": path})
    return cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"data": data})})


# -- the run ------------------------------------------------------------------------------------------------
def run_experiment(
    cfg: ExperimentConfig,
    *,
    overwrite: bool = False,
    max_trials: int | None = None,
    report_dir: str | Path | None = None,
    ray_address: str | None = None,
    base_dir: str | Path | None = None,
) -> ExperimentOutcome:
    """Run (or resume) ``cfg`` on Ray Tune and write its results table.

    ``base_dir`` (default: the working directory) is what relative paths in the configs are
    relative to. ``max_trials`` is this invocation's trial budget (None = run to the end)."""
    import ray
    from ray import tune

    start = time.perf_counter()
    base_dir = str(Path(base_dir or os.getcwd()).resolve())
    cfg = _resolved_experiment(cfg, base_dir)
    base = resolve_paths(load_base(cfg), base_dir)
    n_trials = validate_trials(cfg, base, base_dir)
    exp_dir = (Path(base_dir) / cfg.storage.path).resolve() / cfg.name
    state_path = exp_dir / STATE_FILE
    if overwrite and exp_dir.exists():
        logger.info("--overwrite: removing %s", exp_dir)
        shutil.rmtree(exp_dir)
    config_hash = cfg.config_hash(base)

    from ray.tune import Tuner

    restorable = Tuner.can_restore(str(exp_dir))
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {}
    if restorable and state.get("config_hash") not in (None, config_hash, cfg.legacy_config_hash(base)):
        raise ExperimentConfigError(
            f"experiment {cfg.name!r} in {exp_dir} was started with another config (or base config); "
            "rerun it unchanged to resume, choose another name, or pass --overwrite to start over"
        )

    handle = None
    if cfg.mlflow is not None:
        from glidre_core.experiments.mlflow_runs import open_parent_run
        from glidre_core.tracking import git_commit

        handle = open_parent_run(cfg.mlflow, cfg.name, state.get("parent_run_id") if restorable else None,
                                 {"glidre.config_hash": config_hash, "glidre.git_commit": git_commit()})
    exp_dir.mkdir(parents=True, exist_ok=True)
    state = {"name": cfg.name, "config_hash": config_hash, "base_dir": base_dir,
             "parent_run_id": handle.run_id if handle else None,
             "tracking_uri": handle.tracking_uri if handle else None,
             "created": state.get("created") if restorable else time.strftime("%Y-%m-%dT%H:%M:%S")}
    state_path.write_text(json.dumps(state, indent=1))
    if handle is not None and not handle.resumed:
        _log_parent_config(handle, cfg, n_trials)

    if not ray.is_initialized():
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"))
    payload = {
        "experiment": cfg.model_dump(mode="json"), "base": base, "base_dir": base_dir,
        "parent": dataclasses.asdict(handle) if handle else None,
    }
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), resources)
    key = str(exp_dir)
    if restorable:
        logger.info("restoring experiment %s from %s", cfg.name, exp_dir)
        tuner = Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                              resume_errored=cfg.storage.retry_errored)
    else:
        param_space, searcher, num_samples = build_search(cfg)
        tuner = Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=cfg.metric, mode=cfg.mode, search_alg=searcher, scheduler=build_scheduler(cfg),
                num_samples=num_samples, max_concurrent_trials=cfg.max_concurrent_trials,
                trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                # a fresh process per trial: reusing one actor for trial after trial saved the
                # imports (seconds) but not the memory: low_n_tuned.yaml's two trial processes
                # grew to 10.8 and 10.1 GB after about seven trials each and Ray's OOM killer
                # ended the run on a 23 GB machine. (A run restored from before this keeps its
                # stored setting; each invocation still starts fresh actors, so --max-trials
                # bounds how many trials one process runs.)
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=str(exp_dir.parent),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=cfg.storage.max_failures),
                callbacks=[TrialBudget(key)],
            ),
        )
    _BUDGETS[key] = _Budget(max_trials)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    # Tune installs its stop handler for SIGINT/SIGUSR1 in the main thread and, on the first
    # signal, puts the previous SIGINT handler back: the one public trace of an interruption
    # (trial statuses are all "terminated" after fit() either way)
    tune_catches = threading.current_thread() is threading.main_thread() and not int(
        os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    try:
        grid = tuner.fit()
        signalled = tune_catches and signal.getsignal(signal.SIGINT) is handlers[signal.SIGINT]
    except BaseException:
        if handle is not None:
            from glidre_core.tracking import client

            client(handle.tracking_uri).set_terminated(handle.run_id, status="FAILED")
        raise
    finally:
        # Tune leaves its stop handler installed after fit(); later code expects the old ones
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        budget = _BUDGETS.pop(key)

    planned = n_trials if cfg.search != "optuna" else cfg.num_samples
    interrupted = signalled or budget.fired or len(grid) < planned
    rows = collect_rows(cfg, grid, interrupted)
    out_dir = Path(report_dir) if report_dir else (Path(cfg.report.output_dir) if cfg.report.output_dir else exp_dir)
    report = build_report(
        cfg, rows, interrupted=interrupted, restored=restorable, experiment_path=str(exp_dir),
        config_hash=config_hash, mlflow_parent_run_id=handle.run_id if handle else None,
        seconds_this_invocation=round(time.perf_counter() - start, 1),
    )
    json_path, md_path = write_report(report, out_dir)
    if handle is not None:
        _finish_parent(handle, rows, json_path, md_path, interrupted)
    logger.info("experiment %s: %s -> %s", cfg.name, report["trials"], md_path)
    return ExperimentOutcome(
        cfg.name, exp_dir, report, json_path, md_path, restorable, interrupted, budget.fired,
        handle.run_id if handle else None, time.perf_counter() - start,
    )


def collect_rows(cfg: ExperimentConfig, grid, interrupted: bool) -> list[TrialRow]:
    """One :class:`TrialRow` per trial of Tune's ResultGrid, in trial creation order.

    A trial without the final report and without an error was stopped by ASHA when the
    experiment ran to its end, and is unfinished when it was interrupted."""
    rows = []
    seen: set[str] = set()
    for result in grid:
        if result.config is None:  # a trial that never started: listed below from the plan
            continue
        trial = result.config.get("trial", {})
        seen.add(json.dumps(trial, sort_keys=True, default=str))
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("trial_")
        if metrics.get(DONE_KEY):
            status = "done"
        elif result.error is not None:
            status = "error"
        elif cfg.scheduler == "asha" and not interrupted and metrics:
            status = "stopped"
        else:
            status = "incomplete"
        model_dir = None
        if status == "done" and cfg.storage.keep_models and result.checkpoint is not None:
            model_dir = str(Path(result.checkpoint.path) / MODEL_SUBDIR)
        rows.append(TrialRow(
            trial_id=str(trial_id), arm=trial.get("arm"), params=trial.get("params") or {}, seed=int(trial.get("seed", 0)),
            status=status,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            error=str(result.error)[:2000] if result.error is not None else None, path=result.path, model_dir=model_dir,
        ))
    rows.sort(key=lambda r: r.trial_id)
    if cfg.search != "optuna":
        for trial in expand_trials(cfg):
            if json.dumps(trial, sort_keys=True, default=str) not in seen:
                rows.append(TrialRow(trial_id="(pending)", arm=trial.get("arm"), params=trial.get("params") or {},
                                     seed=int(trial["seed"]), status="incomplete"))
    return rows


def _log_parent_config(handle, cfg: ExperimentConfig, n_trials: int) -> None:
    import yaml

    from glidre_core.tracking import client

    c = client(handle.tracking_uri)
    params = {"search": cfg.search, "scheduler": cfg.scheduler, "metric": cfg.metric, "mode": cfg.mode,
              "seeds": json.dumps(cfg.seeds), "trials": str(n_trials), "space": json.dumps(list(cfg.space))[:500]}
    for k, v in params.items():
        c.log_param(handle.run_id, k, v)
    c.log_text(handle.run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "experiment.yaml")


def _finish_parent(handle, rows: list[TrialRow], json_path: Path, md_path: Path, interrupted: bool) -> None:
    from glidre_core.experiments.mlflow_runs import close_open_children
    from glidre_core.tracking import client

    close_open_children(handle, {r.trial_id: r.status for r in rows})
    c = client(handle.tracking_uri)
    c.log_artifact(handle.run_id, str(json_path), "results")
    c.log_artifact(handle.run_id, str(md_path), "results")
    c.set_tag(handle.run_id, "glidre.trials_done", str(sum(r.status == "done" for r in rows)))
    c.set_terminated(handle.run_id, status="KILLED" if interrupted else "FINISHED")
