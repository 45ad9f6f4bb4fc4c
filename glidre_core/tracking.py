"""MLflow tracking of training runs.

Ray Train V2 rejects Tune callbacks (``MLflowLoggerCallback``), so logging is plain
:class:`mlflow.MlflowClient` calls made by rank 0 (or by the single in-process trainer). The
driver opens the MLflow run (:func:`open_run`) and hands its :class:`RunHandle` to the workers;
starting the same training run again reopens the same MLflow run, so a resumed run keeps one
history. No ``mlflow.set_tracking_uri``: every call names its tracking URI (no global state).

Plots are drawn with :class:`matplotlib.figure.Figure` (no pyplot state machine): training and dev
curves, F1 against the decision threshold, and per-relation F1 bars.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glidre_core.documents import Document
from glidre_core.training.config import MLflowSection, TrainingConfig

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_NAME_TAG = "glidre.run_name"
#: metrics of a dev record that are logged at each evaluation step
EVAL_METRICS = (
    "train_loss", "dev_f1", "dev_ign_f1", "dev_threshold", "dev_precision", "dev_recall",
    "lr_heads", "docs_per_second",
)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; a relative sqlite
    path is made absolute (Ray Train workers run in another working directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix):]
        if not os.path.isabs(path):
            uri = prefix + str(Path(path).resolve())
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite-backed store go next to the database (``mlartifacts/``)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return (Path(tracking_uri[len(prefix):]).parent / "mlartifacts").resolve().as_uri()
    return None


def client(tracking_uri: str | None = None):
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass(frozen=True)
class RunHandle:
    """What a worker needs to log into the run the driver opened (picklable, plain strings)."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    run_name: str
    resumed: bool = False


def get_or_create_experiment(section: MLflowSection, tracking_uri: str) -> str:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(section.experiment)
    if exp is not None:
        return exp.experiment_id
    location = section.artifact_location or default_artifact_location(tracking_uri)
    return c.create_experiment(section.experiment, artifact_location=location)


def open_run(section: MLflowSection, run_name: str, tags: dict[str, str] | None = None) -> RunHandle:
    """The MLflow run of training run ``run_name``: reopened when it exists (resume), else new."""
    uri = resolve_tracking_uri(section.tracking_uri)
    c = client(uri)
    exp_id = get_or_create_experiment(section, uri)
    found = c.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        logger.info("reopened MLflow run %s (%s)", run_id, run_name)
        return RunHandle(uri, exp_id, run_id, run_name, resumed=True)
    run = c.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **(tags or {})})
    logger.info("MLflow run %s (%s) in experiment %s at %s", run.info.run_id, run_name, section.experiment, uri)
    return RunHandle(uri, exp_id, run.info.run_id, run_name)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``a.b.c`` keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        value = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
        out[prefix[:-1]] = value[:500]
    return out


def config_hash(cfg: TrainingConfig) -> str:
    """sha256 of the canonical JSON of the config (what produced a model)."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def documents_fingerprint(docs: Iterable[Document]) -> str:
    """sha256 over the documents (ids, text, entities, relations), order-independent: two
    evaluations are comparable only when this matches."""
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.doc_id):
        h.update(json.dumps(d.model_dump(mode="json"), sort_keys=True).encode())
    return h.hexdigest()


def git_commit(directory: str | Path = ".") -> str:
    """Commit of the code being run, read from ``.git`` (no git process is started);
    ``GLIDRE_GIT_COMMIT`` wins (jobs ship their code without ``.git``)."""
    if os.environ.get("GLIDRE_GIT_COMMIT"):
        return os.environ["GLIDRE_GIT_COMMIT"]
    start = Path(directory).resolve()
    git = next((d / ".git" for d in (start, *start.parents) if (d / ".git").is_dir()), None)
    if git is None:
        return "unknown"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # detached HEAD
        ref = head[len("ref: "):]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        pass
    return "unknown"


class RunTracker:
    """Rank-0 logging into one MLflow run."""

    def __init__(self, handle: RunHandle):
        self.handle = handle
        self.client = client(handle.tracking_uri)
        self.run_id = handle.run_id

    def log_config(self, cfg: TrainingConfig, tags: dict[str, str] | None = None) -> None:
        """Parameters (flattened config), the config file and tags. Re-logging after a resume
        with a changed config keeps the first values (MLflow params are immutable)."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        data = cfg.model_dump(mode="json")
        data["model"].pop("labels", None)  # can be tens of thousands of strings in pretraining
        params = [Param(k[:250], v) for k, v in flatten(data).items()]
        try:
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        except MlflowException as exc:
            logger.warning("parameters not re-logged (the resumed run was started with another config?): %s", exc)
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/training_config.yaml")

    def log_eval(self, record: dict[str, Any]) -> None:
        """One dev evaluation: loss, dev F1, Ign F1, threshold... at its optimizer step."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step = int(record["step"])
        metrics = [
            Metric(k, float(record[k]), ts, step) for k in EVAL_METRICS
            if isinstance(record.get(k), (int, float)) and record[k] == record[k]  # skip NaN
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, data: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), artifact_file)

    def log_figure(self, fig, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_file)

    def log_final(
        self, history: Sequence[dict[str, Any]], final_eval: dict[str, Any], threshold_curve: Sequence[tuple[float, float]]
    ) -> None:
        """End-of-run artifacts: history, final evaluation JSON, plots, summary metrics."""
        from mlflow.entities import Metric

        self.log_json(list(history), "history.json")
        self.log_json(final_eval, "evaluation/final_eval.json")
        self.log_figure(plot_training_curves(history), "plots/training_curves.png")
        self.log_figure(plot_f1_vs_threshold(threshold_curve, final_eval.get("threshold")), "plots/f1_vs_threshold.png")
        if final_eval.get("per_relation"):
            self.log_figure(plot_per_relation_f1(final_eval["per_relation"]), "plots/per_relation_f1.png")
        ts = int(time.time() * 1000)
        step = int(history[-1]["step"]) if history else 0
        keys = ("f1", "ign_f1", "precision", "recall", "threshold")
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(f"final_{k}", float(final_eval[k]), ts, step) for k in keys if k in final_eval],
        )

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


# -- plots ---------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_training_curves(history: Sequence[dict[str, Any]]):
    """Training loss (left axis) and dev F1 / Ign F1 (right axis) against the optimizer step."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = [r["step"] for r in history]
    ax.plot(steps, [r.get("train_loss") for r in history], color="tab:red", marker="o", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(steps, [r.get("dev_f1") for r in history], color="tab:blue", marker="s", label="dev F1")
    if any("dev_ign_f1" in r for r in history):
        ax2.plot(steps, [r.get("dev_ign_f1") for r in history], color="tab:cyan", marker="^", ls="--", label="dev Ign F1")
    ax2.set_ylabel("dev F1 (best threshold)", color="tab:blue")
    ax2.set_ylim(0, 1)
    best = max(history, key=lambda r: r.get("dev_f1", -1), default=None)
    if best is not None:
        ax2.axvline(best["step"], color="grey", ls=":", lw=1)
    fig.legend(loc="outside upper center", ncols=3, fontsize="small")
    return fig


def plot_f1_vs_threshold(curve: Sequence[tuple[float, float]], chosen: float | None = None):
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    if curve:
        xs, ys = zip(*curve)
        ax.plot(xs, ys, marker="o", color="tab:blue")
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", ls="--", label=f"chosen threshold {chosen:.3f}")
        ax.legend(fontsize="small")
    ax.set_xlabel("decision threshold")
    ax.set_ylabel("dev F1")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("F1 against the decision threshold (dev)")
    return fig


def plot_per_relation_f1(per_relation: dict[str, dict[str, float]], top: int = 40):
    """Horizontal F1 bars of the ``top`` relations with the most gold facts (support annotated)."""
    rows = sorted(per_relation.items(), key=lambda kv: (-kv[1].get("gold", 0), kv[0]))[:top]
    rows.reverse()
    fig = _figure(7, max(2.5, 0.22 * len(rows) + 1))
    ax = fig.add_subplot()
    names = [r for r, _ in rows]
    f1s = [m["f1"] for _, m in rows]
    ax.barh(range(len(rows)), f1s, color="tab:blue")
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    for i, (_, m) in enumerate(rows):
        ax.text(min(m["f1"] + 0.01, 0.9), i, f"n={int(m.get('gold', 0))}", va="center", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title(f"per-relation F1 (top {len(rows)} by support)")
    return fig
