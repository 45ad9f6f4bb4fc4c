"""MLflow runs of an experiment: one parent run, one nested child run per trial.

Tune callbacks for MLflow are not used: the trials log with plain client calls (as Ray Train's
rank 0 does, :mod:`glidre_core.tracking`), so that a trial that resumes reopens *its* child run
and a restored experiment reopens *its* parent run instead of starting new ones. The child run
is found again by the trial's Tune id, which survives ``Tuner.restore``.
"""

from __future__ import annotations

import logging

from glidre_core.tracking import RUN_NAME_TAG, RunHandle, client, get_or_create_experiment, resolve_tracking_uri
from glidre_core.training.config import MLflowSection

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests runs by
TRIAL_ID_TAG = "glidre.trial_id"
EXPERIMENT_TAG = "glidre.experiment"
STATUS_TAG = "glidre.trial_status"  # running | done | stopped | error | incomplete (the report's words)


def open_parent_run(section: MLflowSection, name: str, run_id: str | None, tags: dict[str, str]) -> RunHandle:
    """The experiment's parent run: ``run_id`` reopened when it still exists (a restored
    experiment), else a new run named ``name``."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(section.tracking_uri)
    c = client(uri)
    exp_id = get_or_create_experiment(section, uri)
    if run_id:
        try:
            run = c.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                c.update_run(run_id, status="RUNNING")
                logger.info("reopened MLflow parent run %s (%s)", run_id, name)
                return RunHandle(uri, run.info.experiment_id, run_id, name, resumed=True)
        except MlflowException:
            logger.warning("MLflow parent run %s of experiment %s is gone: starting a new one", run_id, name)
    run = c.create_run(exp_id, run_name=name, tags={RUN_NAME_TAG: name, EXPERIMENT_TAG: name, **tags})
    logger.info("MLflow parent run %s (%s) at %s", run.info.run_id, name, uri)
    return RunHandle(uri, exp_id, run.info.run_id, name)


def open_child_run(parent: RunHandle, trial_id: str, trial_name: str, tags: dict[str, str]) -> RunHandle:
    """The child run of trial ``trial_id`` under ``parent``: reopened when the trial ran before
    (resumed), else created."""
    c = client(parent.tracking_uri)
    found = c.search_runs(
        [parent.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return RunHandle(parent.tracking_uri, parent.experiment_id, run_id, trial_name, resumed=True)
    run = c.create_run(
        parent.experiment_id, run_name=trial_name,
        tags={PARENT_TAG: parent.run_id, TRIAL_ID_TAG: trial_id, RUN_NAME_TAG: f"{parent.run_name}/{trial_name}",
              EXPERIMENT_TAG: parent.run_name, **tags},
    )
    return RunHandle(parent.tracking_uri, parent.experiment_id, run.info.run_id, trial_name)


def child_runs(parent: RunHandle) -> list:
    """Every child run of ``parent`` (MLflow ``Run`` objects)."""
    c = client(parent.tracking_uri)
    return c.search_runs([parent.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'",
                         max_results=10000)


def close_open_children(parent: RunHandle, status_of: dict[str, str]) -> None:
    """Give every unfinished child run the report's status of its trial (``status_of``: trial id
    -> status): a trial stopped by Tune tags itself "stopped", but only the driver knows whether
    that was ASHA or an interruption. Runs still RUNNING (a trial whose actor was killed before
    it could say so) are marked KILLED."""
    c = client(parent.tracking_uri)
    for run in child_runs(parent):
        if run.info.status == "FINISHED":
            continue
        trial_id = run.data.tags.get(TRIAL_ID_TAG, "")
        c.set_tag(run.info.run_id, STATUS_TAG, status_of.get(trial_id, "incomplete"))
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status="KILLED")
