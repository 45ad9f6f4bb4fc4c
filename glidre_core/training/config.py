"""Typed training configuration, loaded from YAML (``configs/*.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from glidre_core.config import GLiDREConfig
from glidre_core.overrides import parse_overrides, set_dotted


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["docred", "glidre", "conll04", "jsonl"] = "docred"
    limit: int | None = Field(None, ge=1, description="read at most this many documents")
    relation_weight: float = Field(
        1.0, ge=0.0, description="training only: the weight of this corpus's documents in the relation "
        "loss (corpora that share the relation heads compete: e.g. CoNLL04's five sentence-level types "
        "next to Re-DocRED's 96 document-level ones)",
    )


class ScalingSection(BaseModel):
    """Ray Train workers. ``num_workers: 0`` trains in-process without Ray (the original loop);
    1 or more runs a ``TorchTrainer`` (DDP: gloo on CPU, nccl on GPU) with checkpoints, resume
    and retries. The effective batch is ``num_workers * batch_size * grad_accum``."""

    model_config = ConfigDict(extra="forbid")
    num_workers: int = Field(0, ge=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, gt=0, description="None = 1 when use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class StorageSection(BaseModel):
    """Where Ray Train persists checkpoints. Starting a run again with the same ``path`` and
    ``run_name`` resumes it from its last checkpoint."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field("runs/ray", description="local directory or s3://bucket/prefix")
    run_name: str | None = Field(None, description="None = the last component of output_dir")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); None = $AWS_ENDPOINT_URL or AWS")
    s3_region: str | None = None
    num_to_keep: int = Field(2, ge=1, description="latest checkpoints kept in storage")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts (FailureConfig); -1 = unlimited")


class MLflowSection(BaseModel):
    """MLflow tracking (present = on). Rank 0 logs; the best checkpoint is registered when
    ``register_as`` is set."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = Field(None, description="None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = "glidre"
    artifact_location: str | None = Field(None, description="for a new experiment; None = next to a sqlite db")
    register_as: str | None = Field(None, description="registered model name; None = do not register")


class PretrainingSection(BaseModel):
    """Many relation types: each batch is scored against its positive types plus negatives
    sampled from the global label vocabulary, capped at ``max_labels_per_batch``."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    negatives_per_batch: int = Field(64, ge=0)
    max_labels_per_batch: int = Field(128, ge=1)
    negative_sampling: Literal["uniform", "frequency"] = "uniform"


class LabelPhrasingsSection(BaseModel):
    """Label augmentation (:mod:`glidre_core.training.label_phrasings`): in training, each label
    of a batch is encoded under one of its phrasings with ``probability``; targets, dev
    evaluation and the saved model keep the canonical names."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., description="a named set ('docred') or a JSON / YAML file {label: [phrasing, ...]}")
    probability: float = Field(0.5, ge=0.0, le=1.0, description="chance that a label is replaced in a batch")


class SubsetSection(BaseModel):
    """The low-resource protocol's training subset: ``n`` documents of the training pool that is
    left after the dev hold-out (``train`` only; ``extra_train`` corpora are kept whole).

    The rule, so that it can be stated in a paper and reproduced: the pool, in file order, is
    shuffled with ``random.Random(seed)`` and its first ``n`` documents are kept (in file order).
    The subset therefore depends on nothing but (pool, n, seed): every arm of an experiment (a
    different initialisation, loss or learning rate) trains on the same documents, and for one
    seed the subsets are nested (the 5 documents of ``n: 5`` are among the 10 of ``n: 10``)."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=1, description="training documents kept")
    seed: int = Field(0, description="seed of the subset shuffle (independent of the training seed)")


class RefitSection(BaseModel):
    """Refit on train + dev with choices already made on dev (SpERT's CoNLL04 protocol).

    A first run, trained on ``train`` and chosen on ``dev``, fixes the recipe: the epoch count and
    the decision thresholds (its saved ``threshold`` and ``entity_threshold``). The refit run then
    trains that recipe on ``train`` + ``dev`` (+ ``extra_dev``): more labelled data, no test data.
    Because its dev documents are training documents, dev can choose nothing in the refit: no
    threshold sweep (the thresholds below are used as given), no checkpoint selection (the
    weights after the last step are kept), and the dev scores it logs are scores on seen data,
    recorded as such (``dev_seen_in_training``), never a held-out result."""

    model_config = ConfigDict(extra="forbid")
    from_model: str | None = Field(
        None, description="the dev-chosen run's saved model directory: its thresholds are read from its "
        "config.json (give this or the thresholds, not both)",
    )
    threshold: float | None = Field(None, gt=0.0, lt=1.0, description="relation threshold the dev-chosen run saved")
    entity_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="entity threshold the dev-chosen run saved (a span head needs it)",
    )

    @model_validator(mode="after")
    def _thresholds(self) -> "RefitSection":
        """Copying two numbers by hand is where a refit goes wrong, so ``from_model`` reads them
        from the dev-chosen model itself; giving both sources is refused as ambiguous."""
        if self.from_model is not None:
            if self.threshold is not None or self.entity_threshold is not None:
                raise ValueError("refit: give from_model or the thresholds, not both")
            if not (Path(self.from_model) / "config.json").is_file():
                raise ValueError(f"refit.from_model: no saved model (config.json) in {self.from_model!r}")
            chosen = GLiDREConfig.load(self.from_model)
            self.threshold = chosen.threshold
            self.entity_threshold = chosen.entity_threshold if chosen.span_head else None
        elif self.threshold is None:
            raise ValueError("refit needs threshold (or from_model, the dev-chosen run's saved model)")
        return self


class TrainingConfig(BaseModel):
    """Everything a training run needs. The test set never appears here: dev data chooses."""

    model_config = ConfigDict(extra="forbid")

    model: GLiDREConfig = Field(default_factory=GLiDREConfig)
    train: DataConfig
    dev: DataConfig | None = Field(None, description="separate dev file; else held out from train")
    extra_train: list[DataConfig] = Field(
        default_factory=list, description="more training corpora (e.g. CoNLL04 next to Re-DocRED)"
    )
    extra_dev: list[DataConfig] = Field(default_factory=list, description="their dev sets, added to dev")
    init_from: str | None = Field(
        None,
        description="start from a saved model directory (or 'default'); its config is the base and "
        "the keys given under 'model' override it; tensors it lacks (a new span head) start fresh",
    )
    train_only: list[str] | None = Field(
        None,
        description="train only parameters whose names start with one of these prefixes "
        "(e.g. ['span_head.']); everything else is frozen. None = the usual split",
    )
    select_on: Literal["relation", "entity", "mean"] | None = Field(
        None, description="dev score that picks the best checkpoint; None = relation, or mean with a span head"
    )
    dev_holdout: int = Field(50, ge=0, description="documents held out of train when dev is None")
    holdout_seed: int | None = Field(
        None, description="seed of the dev hold-out shuffle; None = seed. Set it to keep one fixed "
        "hold-out while the training seed varies (the low-resource protocol)",
    )
    subset: SubsetSection | None = Field(None, description="train on n documents of the pool left after the hold-out")
    exclude_labels: list[str] = Field(
        default_factory=list,
        description="relation labels removed from every training and dev document before training "
        "(the zero-shot protocol: the model never sees them, as positives or as candidates)",
    )
    unseen_calibration_labels: list[str] = Field(
        default_factory=list,
        description="'pseudo-unseen' labels, also listed in exclude_labels, whose facts in the dev "
        "documents choose the model's unseen_label_threshold after training (the threshold for "
        "labels the model never trained on; glidre_core.training.calibration)",
    )
    refit: RefitSection | None = Field(
        None, description="train on train + dev with the thresholds of a dev-chosen run and keep the last "
        "weights (SpERT's protocol); None = choose the checkpoint and thresholds on dev",
    )
    label_phrasings: LabelPhrasingsSection | None = Field(
        None, description="train on several phrasings of each label (label augmentation); None = the names only",
    )
    label_descriptions: str | None = Field(
        None, description="a named set ('docred') or a JSON / YAML file {label: description}: every label "
        "with one is encoded as 'label: description' in training and, saved with the model, at inference "
        "(glidre_core.modeling.label_text); merged over model.label_descriptions. None = names only",
    )
    output_dir: str = "runs/train"
    seed: int = 13

    epochs: int = Field(30, ge=1)
    max_steps: int | None = Field(None, ge=1)
    min_steps: int | None = Field(
        None, ge=1, description="train at least this many optimizer steps, adding epochs when the training set is "
        "small (the low-resource protocol: one recipe for 1 to 450 documents); max_steps still caps",
    )
    max_minutes: float | None = Field(None, gt=0, description="stop (and keep the best) after this")
    batch_size: int = Field(4, ge=1, description="documents per forward pass")
    grad_accum: int = Field(1, ge=1)
    lr_encoder: float = 1e-5
    lr_heads: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = 10.0
    bf16: bool = Field(False, description=(
        "bf16 autocast where the device runs bf16 natively (bf16-capable GPU, CPU with AVX512-BF16/AMX); "
        "elsewhere fp32 with a warning, since emulated bf16 is about 13x slower (force_bf16 overrides)"))
    force_bf16: bool = Field(False, description="bf16 autocast even where it is emulated (only to reproduce a "
                             "bf16 run on hardware without bf16 units; slow)")
    cache_frozen_layers: bool = True
    eval_every: int = Field(200, ge=1, description="optimizer steps between dev evaluations")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None = torch default)")

    # Ray Train / MLflow / pretraining (defaults keep the plain in-process loop).
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    mlflow: MLflowSection | None = Field(None, description="None = no MLflow tracking")
    pretraining: PretrainingSection = Field(default_factory=PretrainingSection)

    @model_validator(mode="before")
    @classmethod
    def _init_from_base(cls, data: Any) -> Any:
        """With ``init_from``, the saved model's config.json is the base of ``model`` and the
        given ``model`` keys override it, so a second stage cannot silently change the
        architecture of the weights it starts from."""
        if not isinstance(data, dict) or not data.get("init_from"):
            return data
        from glidre_core.modeling.persistence import DEFAULT_MODEL_DIR

        src = DEFAULT_MODEL_DIR if str(data["init_from"]) == "default" else Path(data["init_from"])
        base = GLiDREConfig.load(src).model_dump()
        given = data.get("model") or {}
        base.update(given.model_dump(exclude_unset=True) if isinstance(given, GLiDREConfig) else given)
        return {**data, "model": base}

    @model_validator(mode="after")
    def _dev(self) -> "TrainingConfig":
        if self.dev is None and self.dev_holdout == 0:
            raise ValueError("a dev set is required: set 'dev' or a positive 'dev_holdout'")
        if self.refit is not None:
            if self.dev is None:
                raise ValueError("refit trains on train + dev: set 'dev' to the dev file the thresholds were chosen on")
            if self.model.span_head and self.refit.entity_threshold is None:
                raise ValueError("refit with a span head needs refit.entity_threshold (the dev-chosen run's)")
            if self.unseen_calibration_labels:
                raise ValueError("refit cannot calibrate unseen labels: its dev documents are training documents")
        stray = sorted(set(self.unseen_calibration_labels) - set(self.exclude_labels))
        if stray:
            raise ValueError(f"unseen_calibration_labels {stray} are not in exclude_labels: a label "
                             "the model trains on cannot stand in for an unseen one")
        return self


def load_training_config(path: str | Path, overrides: list[str] | None = None) -> TrainingConfig:
    """Load YAML, apply ``key.sub=value`` overrides (values parsed as YAML), validate.

    ``init_from`` is resolved by :meth:`TrainingConfig._init_from_base`."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    for key, value in parse_overrides(overrides).items():
        set_dotted(data, key, value)
    return TrainingConfig.model_validate(data)
