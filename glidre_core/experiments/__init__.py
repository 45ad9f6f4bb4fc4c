"""Experiments on Ray Tune: grids and searches of small training/evaluation trials.

``glidre experiment --config configs/experiments/NAME.yaml`` (:func:`run_experiment`) runs every
trial as a Ray Tune trial (in parallel as resources allow), logs one MLflow parent run with a
child run per trial, writes one results table (JSON + Markdown, mean ± std over seeds), and
resumes where it stopped when run again. Modules: :mod:`.config` (the typed YAML),
:mod:`.trial` (one trial), :mod:`.runner` (Tune, resume), :mod:`.report` (the table),
:mod:`.heldout` (held-out evaluation, label restriction, ranking AUC), :mod:`.mlflow_runs`.

Import the submodules directly (this package imports Ray Tune lazily).
"""

from glidre_core.experiments.config import ExperimentConfig, ExperimentConfigError, load_experiment_config

__all__ = ["ExperimentConfig", "ExperimentConfigError", "load_experiment_config", "run_experiment"]


def __getattr__(name: str):
    if name == "run_experiment":
        from glidre_core.experiments.runner import run_experiment

        return run_experiment
    raise AttributeError(name)
