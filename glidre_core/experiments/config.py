"""Typed experiment configuration (``configs/experiments/*.yaml``).

An experiment is a set of small training runs (trials) that differ only in what the experiment
says: a base training config (:class:`~glidre_core.training.config.TrainingConfig` YAML) with
``overrides``, optional named ``arms`` (groups of overrides, e.g. "from the base encoder" and
"from a pretrained model"), a ``space`` of searched parameters and a list of ``seeds``. Each
trial trains on dev-selected checkpoints only; the ``evaluate`` section says which held-out data
it is scored on *after* that choice.

Keys of ``space``, ``arms`` and ``overrides`` are dotted paths into the training config
(``lr_heads``, ``model.loss``, ``subset.n``). Values are plain YAML.

Search:

* ``grid``: every combination of the ``grid``/``choice`` values, times every seed.
* ``random``: ``num_samples`` configurations drawn once (seeded by ``search_seed``) from the
  distributions, each crossed with every ``grid`` value and every seed. The draw happens here,
  not in Tune, so that all seeds of one configuration share its values (mean ± std over seeds
  needs that) and a restarted experiment draws the same configurations.
* ``optuna``: Tune's ``OptunaSearch`` proposes ``num_samples`` configurations, one seed each
  (the optional ``optuna`` extra).

Paths (``base``, data files, ``init_from``, ``storage.path``) are relative to the working
directory the experiment is started from, as in every config of this project.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from itertools import product
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glidre_core.overrides import parse_overrides, set_dotted
from glidre_core.training.config import DataConfig, MLflowSection, TrainingConfig


class ExperimentConfigError(ValueError):
    """An experiment config that cannot run; the message names the field."""


class ParamSpec(BaseModel):
    """One searched parameter: exactly one of ``grid``, ``choice``, ``loguniform``, ``uniform``.

    A bare YAML list is read as ``grid``."""

    model_config = ConfigDict(extra="forbid")
    grid: list[Any] | None = None
    choice: list[Any] | None = None
    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"grid": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamSpec":
        given = [k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, loguniform, uniform (got {given or 'none'})")
        values = self.grid if self.grid is not None else self.choice
        if values is not None and not values:
            raise ValueError(f"{given[0]} needs at least one value")
        for kind in ("loguniform", "uniform"):
            bounds = getattr(self, kind)
            if bounds is not None:
                low, high = bounds
                if not low < high:
                    raise ValueError(f"{kind}: low {low} must be below high {high}")
                if kind == "loguniform" and low <= 0:
                    raise ValueError(f"loguniform: bounds must be positive (got {low})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None)

    def sample(self, rng: random.Random) -> Any:
        """One value drawn with ``rng`` (``choice``, ``loguniform``, ``uniform``)."""
        if self.choice is not None:
            return rng.choice(self.choice)
        if self.loguniform is not None:
            low, high = self.loguniform
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        if self.uniform is not None:
            return rng.uniform(*self.uniform)
        raise ValueError("grid values are enumerated, not sampled")

    def tune_domain(self):
        """The Ray Tune search-space object (for searchers that propose values themselves)."""
        from ray import tune

        if self.choice is not None:
            return tune.choice(self.choice)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        raise ValueError("grid values are enumerated by the experiment, not given to a searcher")


class AshaSection(BaseModel):
    """ASHA early stopping. Time is counted in dev evaluations (``training_iteration``: one per
    ``eval_every`` optimizer steps), so ``max_t`` must exceed the evaluations of a full trial plus
    one (the final report), or ASHA would stop the best trials before their test evaluation."""

    model_config = ConfigDict(extra="forbid")
    max_t: int = Field(100, ge=1, description="evaluations after which a trial is stopped in any case")
    grace_period: int = Field(1, ge=1, description="evaluations before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1)
    brackets: int = Field(1, ge=1)


class ResourcesSection(BaseModel):
    """What one trial holds while it runs; Tune runs as many trials at once as the cluster fits
    (capped by ``max_concurrent_trials``). A trial uses ``cpu`` torch threads unless the training
    config sets ``threads``, and the GPU when ``gpu`` > 0."""

    model_config = ConfigDict(extra="forbid")
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class EvaluateSection(BaseModel):
    """Held-out evaluation of each trial's dev-chosen checkpoint (never used to choose)."""

    model_config = ConfigDict(extra="forbid")
    data: DataConfig
    labels: Literal["schema", "data"] | list[str] = Field(
        "schema",
        description="candidate relation labels: schema = the format's schema (the 96 DocRED names for docred), "
        "data = the labels the data uses, or a list",
    )
    restrict_labels: list[str] | None = Field(
        None,
        description="score only these labels: gold facts of other labels are dropped and these are the "
        "candidates (the zero-shot protocol's unseen types)",
    )
    ign_f1: bool = Field(True, description="Ign F1 against the trial's own training facts")
    ranking_auc: bool = Field(False, description="also the ROC AUC of gold facts among all (pair, label) candidates")
    batch_size: int = Field(8, ge=1)


class ExperimentStorage(BaseModel):
    """Where Ray Tune keeps the experiment (``path/name``): trial results, checkpoints and the
    state that ``glidre experiment`` restores from when the same command is run again."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field("runs/experiments", description="local directory")
    checkpoint_trials: bool = Field(
        False,
        description="checkpoint every dev evaluation so an interrupted trial resumes there (else it restarts); "
        "a finished trial keeps only a small result checkpoint",
    )
    keep_models: bool = Field(False, description="keep each trial's best model in its final checkpoint")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (-1 = unlimited)")
    retry_errored: bool = Field(True, description="on restore, run trials that failed before again")

    @field_validator("path")
    @classmethod
    def _local(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("only local directories are supported for experiments (the report and state file are "
                             "written with plain file I/O)")
        return v


class ReportSection(BaseModel):
    """The results table: one row per configuration (arm + searched values), mean ± std over its
    seeds. ``metrics`` are keys of each trial's last report."""

    model_config = ConfigDict(extra="forbid")
    output_dir: str | None = Field(None, description="where results.json / results.md go; None = the experiment directory")
    metrics: list[str] = Field(
        default_factory=lambda: ["best_dev_f1", "test_f1", "test_ign_f1", "test_precision", "test_recall"]
    )
    select_by: str | None = Field(
        None, description="dev metric that marks the best configuration in the table; None = the "
        "experiment's `metric`. For dev metrics a trial only knows at its end (dev_unseen_f1: the "
        "unseen-label calibration runs after training), which Tune's `metric` cannot be, since "
        "Tune needs it in every report",
    )

    @field_validator("select_by")
    @classmethod
    def _dev_select(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(SELECTION_PREFIXES):
            raise ValueError(f"select_by {v!r} would choose on held-out data; use a dev metric")
        return v


#: keys a trial reports that may choose between configurations (never held-out metrics)
SELECTION_PREFIXES = ("dev_", "best_dev_", "train_loss")
#: dev metrics a trial reports only at its end (the unseen-label calibration runs after
#: training): they can mark the best row (``report.select_by``) but cannot be Tune's ``metric``
END_ONLY_METRICS = ("dev_unseen_f1", "dev_unseen_threshold")


class ExperimentConfig(BaseModel):
    """A grid or search of small training/evaluation trials run as Ray Tune trials."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Tune experiment name (storage.path/name) and MLflow parent run name")
    description: str = ""
    base: str | None = Field(None, description="training config YAML the trials start from")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted training-config keys set in every trial")
    arms: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named groups of dotted overrides; every arm is crossed with the space"
    )
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [13], min_length=1)
    seed_keys: list[str] = Field(
        default_factory=lambda: ["seed"],
        description="training-config keys a trial's seed is written to (e.g. [seed, subset.seed])",
    )
    search: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="random / optuna: configurations to try")
    search_seed: int = Field(0, description="seed of the random draw / of Optuna's sampler")
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaSection = Field(default_factory=AshaSection)
    metric: str = Field("best_dev_f1", description="reported dev metric that ASHA, Optuna and the 'best' row use")
    mode: Literal["max", "min"] = "max"
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    max_concurrent_trials: int | None = Field(None, ge=1, description="None = as many as the resources fit")
    evaluate: EvaluateSection | None = None
    storage: ExperimentStorage = Field(default_factory=ExperimentStorage)
    mlflow: MLflowSection | None = Field(None, description="one parent run, one child run per trial")
    report: ReportSection = Field(default_factory=ReportSection)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"name {v!r} must be a plain directory name")
        return v

    @field_validator("metric")
    @classmethod
    def _dev_metric(cls, v: str) -> str:
        if not v.startswith(SELECTION_PREFIXES):
            raise ValueError(f"metric {v!r} would choose on held-out data; use a dev metric (best_dev_f1, dev_f1, ...)")
        if v in END_ONLY_METRICS:
            raise ValueError(f"metric {v!r} exists only when a trial ends, and Tune needs its metric in every "
                             "report: keep metric: best_dev_f1 and set report.select_by: " + v)
        return v

    @model_validator(mode="after")
    def _search(self) -> "ExperimentConfig":
        kinds = {k: p.kind for k, p in self.space.items()}
        if self.search == "grid":
            sampled = [k for k, kind in kinds.items() if kind in ("loguniform", "uniform")]
            if sampled:
                raise ValueError(f"space.{sampled[0]}: {kinds[sampled[0]]} needs search: random or optuna "
                                 "(grid search enumerates grid/choice values)")
            if self.num_samples != 1:
                raise ValueError("num_samples: grid search enumerates the space; repeat it with more seeds instead")
        if self.search == "optuna":
            grids = [k for k, kind in kinds.items() if kind == "grid"]
            if grids:
                raise ValueError(f"space.{grids[0]}: Optuna proposes values itself; use choice instead of grid")
            if len(self.seeds) != 1:
                raise ValueError("seeds: Optuna runs one seed per proposed configuration; give one seed "
                                 "(or use search: random to repeat each configuration over seeds)")
        for key in self.space:
            if key in self.seed_keys:
                raise ValueError(f"space.{key} is also in seed_keys")
        if self.scheduler == "asha" and self.asha.grace_period > self.asha.max_t:
            raise ValueError("asha.grace_period must not exceed asha.max_t")
        return self

    # -- derived ---------------------------------------------------------------------------------
    def param_names(self) -> list[str]:
        """Column names of the table: the arm (when there are arms), then the space keys."""
        return (["arm"] if self.arms else []) + list(self.space)

    def config_hash(self, base: dict[str, Any]) -> str:
        """What decides the trials; a restore with another hash is refused.

        Hashed: this experiment's fields (``base`` and ``overrides`` replaced by their result,
        the resolved base training config) and that training config with every value equal to
        its :class:`TrainingConfig` default left out. So two configs that train the same trials
        hash alike: when a default moves in ``configs/default_model.yaml`` and an experiment pins
        the old value in its ``overrides``, it still resumes. The report and MLflow sections and
        the concurrency cap are left out: changing them changes no trial. Experiment fields equal
        to their defaults are left out too, so that a field added to this class in a later
        version does not make older experiments unrestorable."""
        data = self.model_dump(mode="json", exclude_defaults=True,
                               exclude={"report", "max_concurrent_trials", "description", "mlflow",
                                        "base", "overrides"})
        data["base_effective"] = without_defaults(base, TrainingConfig)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def legacy_config_hash(self, base: dict[str, Any]) -> str:
        """The hash of experiments started before 2026-12-03 (the ``base`` path, the
        ``overrides`` and the base as written). Still accepted on restore, so that those
        experiments resume; the state file then stores :meth:`config_hash`."""
        data = self.model_dump(mode="json", exclude_defaults=True,
                               exclude={"report", "max_concurrent_trials", "description", "mlflow"})
        data["base_resolved"] = base
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def without_defaults(data: dict[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    """``data`` (a config as plain YAML values) without the keys whose value equals the default
    of that field in ``schema``; nested pydantic sections (``model``) are treated alike. Keys the
    schema does not know are kept (validation, not this, reports them)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = schema.model_fields.get(key)
        if field is None:
            out[key] = value
            continue
        nested = field.annotation if isinstance(field.annotation, type) else None
        if isinstance(value, dict) and nested is not None and issubclass(nested, BaseModel):
            value = without_defaults(value, nested)
            if not value:
                continue
        elif not field.is_required():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            if value == default:
                continue
        out[key] = value
    return out


def load_experiment_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load YAML, apply ``key.sub=value`` overrides (values parsed as YAML), validate.

    Errors are :class:`ExperimentConfigError` naming the file and field."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    for key, value in parse_overrides(overrides).items():
        set_dotted(data, key, value)
    from pydantic import ValidationError

    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ExperimentConfigError(f"{path}: {exc}") from None


# -- training configs of trials ----------------------------------------------------------------------
def apply_dotted(data: dict[str, Any], values: dict[str, Any]) -> None:
    """Set every ``values`` key (dotted, or a nested mapping merged key by key) in ``data``."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(_get_dotted(data, key), dict):
            apply_dotted(data, {f"{key}.{k}": v for k, v in value.items()})
        else:
            set_dotted(data, key, value)


def _get_dotted(data: dict[str, Any], dotted: str) -> Any:
    cur: Any = data
    for k in dotted.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def load_base(cfg: ExperimentConfig) -> dict[str, Any]:
    """The base training config as a plain dict with the experiment's overrides applied."""
    data: dict[str, Any] = {}
    if cfg.base:
        path = Path(cfg.base)
        if not path.is_file():
            raise ExperimentConfigError(f"base: no such training config {cfg.base!r}")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    apply_dotted(data, cfg.overrides)
    return data


def resolve_paths(data: dict[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """Relative data / model paths made absolute against ``base_dir`` (the directory the
    experiment was started from): Tune runs each trial in its own working directory."""
    root = Path(base_dir)

    def fix(p: Any) -> Any:
        if not isinstance(p, str) or "://" in p or p == "default" or Path(p).is_absolute():
            return p
        return str((root / p).resolve())

    for key in ("train", "dev"):
        if isinstance(data.get(key), dict) and "path" in data[key]:
            data[key]["path"] = fix(data[key]["path"])
    for key in ("extra_train", "extra_dev"):
        for item in data.get(key) or []:
            if isinstance(item, dict) and "path" in item:
                item["path"] = fix(item["path"])
    if data.get("init_from"):
        data["init_from"] = fix(data["init_from"])
    return data


def trial_training_dict(
    base: dict[str, Any], cfg: ExperimentConfig, trial: dict[str, Any], base_dir: str | Path
) -> dict[str, Any]:
    """The training config of one trial as a dict: base, then the arm's overrides, then the
    searched values, then the seed in every ``seed_keys`` path. MLflow and Ray Train sections
    are dropped: a trial trains in-process in its Tune actor and logs into its child run."""
    import copy

    data = copy.deepcopy(base)
    arm = trial.get("arm")
    if arm is not None:
        if arm not in cfg.arms:
            raise ExperimentConfigError(f"arms: no arm named {arm!r}")
        apply_dotted(data, cfg.arms[arm])
    apply_dotted(data, trial.get("params") or {})
    for key in cfg.seed_keys:
        set_dotted(data, key, trial["seed"])
    data.pop("mlflow", None)
    data.pop("scaling", None)
    return resolve_paths(data, base_dir)


def build_training_config(
    base: dict[str, Any], cfg: ExperimentConfig, trial: dict[str, Any], base_dir: str | Path, output_dir: str
) -> TrainingConfig:
    """The validated :class:`TrainingConfig` of one trial (errors name the trial's values)."""
    from pydantic import ValidationError

    data = trial_training_dict(base, cfg, trial, base_dir)
    data["output_dir"] = output_dir
    if data.get("threads") is None:
        data["threads"] = max(1, int(cfg.resources.cpu))
    try:
        return TrainingConfig.model_validate(data)
    except (ValidationError, FileNotFoundError) as exc:  # init_from reads the saved model's config
        raise ExperimentConfigError(f"trial {describe_trial(trial)}: invalid training config: {exc}") from None


def describe_trial(trial: dict[str, Any]) -> str:
    parts = [f"arm={trial['arm']}"] if trial.get("arm") is not None else []
    parts += [f"{k}={v}" for k, v in (trial.get("params") or {}).items()]
    parts.append(f"seed={trial['seed']}")
    return ", ".join(parts)


def expand_trials(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """The explicit trials of a grid or random search: ``{"arm", "params", "seed"}`` dicts, seed
    by seed (so a partly run experiment already covers every configuration once)."""
    if cfg.search == "optuna":
        raise ValueError("Optuna proposes its trials while the experiment runs")
    grid_keys = [k for k, p in cfg.space.items() if p.kind in ("grid",) or (cfg.search == "grid" and p.kind == "choice")]
    grid_values = [cfg.space[k].grid if cfg.space[k].grid is not None else cfg.space[k].choice for k in grid_keys]
    sampled_keys = [k for k in cfg.space if k not in grid_keys]
    rng = random.Random(cfg.search_seed)
    samples = [
        {k: cfg.space[k].sample(rng) for k in sampled_keys} for _ in range(cfg.num_samples if sampled_keys else 1)
    ]
    arms: list[str | None] = list(cfg.arms) or [None]
    configs = []
    for arm in arms:
        for combo in product(*grid_values):
            for sample in samples:
                params = dict(zip(grid_keys, combo))
                params.update(sample)
                configs.append({"arm": arm, "params": {k: params[k] for k in cfg.space}})
    return [{**c, "seed": seed} for seed in cfg.seeds for c in configs]
