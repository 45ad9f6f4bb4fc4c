"""Typed configuration of the corpus extraction job, loaded from YAML (``configs/extract.yaml``).

The same :class:`ExtractConfig` is built by the CLI (``glidre extract``), by the Ray job entry
point (``jobs/extract.py``) and by the tests, so there is one place where defaults and validation
live. Overrides are ``key.sub=value`` strings whose values are parsed as YAML, exactly like the
training config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from glidre_core.extraction.storage_config import StorageConfig
from glidre_core.llm.config import OpenAIBackendConfig, TransformersBackendConfig
from glidre_core.overrides import load_config_data

__all__ = ["ActorConfig", "ExtractConfig", "RayConfig", "StorageConfig", "VerifyConfig", "cli_values",
           "load_extract_config"]


class ActorConfig(BaseModel):
    """The model actor pool (``ActorPoolStrategy``): each actor loads the model once."""

    model_config = ConfigDict(extra="forbid")
    min_size: int = Field(1, ge=1)
    max_size: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; 0 = run on CPU")
    # None lets the resource planner (extraction/resources.py) give each actor 1 CPU, or less
    # when that would leave no CPU for the read/preprocess/write tasks (the pipeline would hang).
    # An explicit value is never changed: if it does not fit, the job refuses to start.
    num_cpus: float | None = Field(
        None, gt=0, description="logical CPUs reserved per actor; None = 1, shrunk to fit the cluster"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per actor; None = Ray's default (floor(num_cpus), at least 1)"
    )
    max_tasks_in_flight: int | None = Field(None, ge=1, description="batches queued per actor")

    @model_validator(mode="after")
    def _sizes(self) -> "ActorConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"actors.min_size ({self.min_size}) > actors.max_size ({self.max_size})")
        return self


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(
        None, description="None = RAY_ADDRESS / a running local cluster / start a local Ray; 'local' = always start one"
    )
    num_cpus: int | None = Field(
        None, ge=1, description="logical CPUs of a Ray started by the job (None = all cores)"
    )
    check_resources: bool = Field(
        True, description="plan actors/tasks against the cluster and refuse what cannot run; turn off for "
        "autoscaling clusters that add nodes only once work is queued (the stall watchdog still applies)"
    )


#: The backends the verify stage can call: objects behind :class:`~glidre_core.llm.base.LLMBackend`
#: (``ray_vllm`` is a Ray Data stage of its own, not an object an actor can call).
VerifyBackendConfig = Annotated[OpenAIBackendConfig | TransformersBackendConfig, Field(discriminator="kind")]


class VerifyPromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field("verify-yn", description="verify-yn (instruction-tuned models) or verify-yn-fewshot (base models)")
    version: int = Field(1, ge=1)


class VerifyConfig(BaseModel):
    """The LMRC-style verify stage of ``glidre extract`` (issue 14.3; code: :mod:`glidre_core.llm.verify`).

    Off by default. When on, every (head, tail, label) whose GLiDRE probability ``p`` falls in a
    band around that label's decision threshold ``t`` is sent to an LLM, with the sentences of the
    two entities, and the LLM confirms or rejects it:

    * the band is a *margin around each label's threshold* (not absolute probabilities), so it
      follows per-label and dev-chosen thresholds: in band iff ``t - margin_below < p <= t +
      margin_above``. ``margin_below = 0`` only re-checks accepted triplets (precision);
      ``margin_above = 0`` only rescues rejected ones (recall);
    * above the band: kept without asking; below: dropped (as without the stage);
    * at most ``max_pairs_per_doc`` requests per document, the candidates closest to their
      threshold first; the others keep GLiDRE's decision (counted as ``over_cap``);
    * an unusable answer (request failed, not JSON after repair, no yes/no): ``on_error: keep``
      lets GLiDRE's own decision stand (``p > t`` kept), ``drop`` drops the candidate; counted
      either way.
    """

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="off by default: no LLM is called, the output is GLiDRE's alone")
    margin_below: float = Field(0.1, ge=0, lt=1, description="band starts this far below each label's threshold")
    margin_above: float = Field(0.1, ge=0, lt=1, description="band ends this far above each label's threshold")
    backend: VerifyBackendConfig | None = Field(
        None, description="the LLM: {kind: openai, base_url, model, ...} or {kind: transformers, model, ...}")
    prompt: VerifyPromptConfig = Field(default_factory=VerifyPromptConfig)
    max_tokens: int = Field(16, ge=1, description="per answer: {\"answer\": \"yes\"} is under 10 tokens")
    temperature: float = Field(0.0, ge=0)
    max_context_chars: int = Field(600, ge=80, description="document context per request (the sentences of "
                                   "the two entities, cut around their mentions)")
    max_pairs_per_doc: int = Field(16, ge=1, description="requests per document at most (closest to threshold first)")
    on_error: Literal["keep", "drop"] = Field(
        "keep", description="unusable answer: keep = GLiDRE's decision stands; drop = the candidate is dropped")

    @model_validator(mode="after")
    def _check(self) -> "VerifyConfig":
        if self.enabled and self.backend is None:
            raise ValueError("verify.enabled needs verify.backend ({kind: openai, ...} or {kind: transformers, ...})")
        if self.margin_below == 0 and self.margin_above == 0 and self.enabled:
            raise ValueError("verify: margin_below and margin_above are both 0: the band is empty")
        from glidre_core.llm.verify import get_verify_prompt

        try:
            get_verify_prompt(self.prompt.id, self.prompt.version)
        except KeyError as exc:
            raise ValueError(f"verify.prompt: {exc.args[0]}") from None
        return self


class ExtractConfig(BaseModel):
    """Everything an extraction run needs; stored (without secrets) in the output manifest."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(..., description="file, directory or s3:// prefix of JSON Lines / Parquet documents")
    output: str = Field(..., description="directory or s3:// prefix for triplets/, entities/, errors/")
    input_format: Literal["auto", "jsonl", "parquet"] = "auto"

    model: str = Field("default", description="model directory, 'default', or models:/NAME@ALIAS")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI for models:/ references")
    labels: str | list[str] | None = Field(
        None, description="file (one label per line), a named set ('redocred'), a list, or None = the model's labels"
    )
    threshold: float | None = Field(None, gt=0, lt=1, description="global threshold; None = the model's")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-label thresholds")
    top_k: int | None = Field(None, ge=1, description="keep at most k labels per entity pair")

    # Documents without entities are run through the model's span head (joint extraction); these
    # only matter for such documents, and only with a model that has a span head.
    entity_labels: str | list[str] | None = Field(
        None, description="entity types: file, named set ('docred', 'conll04'), list, or None = the model's types"
    )
    entity_threshold: float | dict[str, float] | None = Field(
        None, description="span threshold: global, per entity type, or None = the model's dev-chosen one"
    )
    coreference: Literal["rules", "none"] | None = Field(
        None, description="group predicted mentions into entities ('rules') or not ('none'); None = the model's"
    )
    entity_recognizer: Literal["auto", "model", "spacy"] = Field(
        "auto", description="who finds entities in documents without them: the model's span head, spaCy (the "
        "optional [spacy] extra), or auto = the span head when the model has one, else spaCy when installed "
        "(the span head measured better end to end on both benchmarks: see README)"
    )

    max_entities: int = Field(128, ge=1, description="documents with more entities go to errors/")
    max_text_chars: int = Field(200_000, ge=1, description="longer documents go to errors/")

    batch_size: int = Field(8, ge=1, description="documents per model forward")
    batches_per_call: int | None = Field(
        None, ge=1, description="model batches per actor call; None = 4 on GPU actors (the predictor "
        "overlaps one batch's decoding with the next batch's forward, which needs several batches "
        "per call), 1 on CPU actors (nothing to overlap; finer progress)")
    lines_per_block: int = Field(256, ge=1, description="documents per read block")
    docs_per_file: int = Field(512, ge=1, description="max documents per output part (the unit of commit and resume)")
    preprocess_num_cpus: float = Field(0.25, gt=0, description="CPUs per validate/tokenize task")
    actors: ActorConfig = Field(default_factory=ActorConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="LLM verification of uncertain "
                                 "triplets (off by default; see VerifyConfig)")

    resume: bool = Field(False, description="skip documents already in the output")
    overwrite: bool = Field(False, description="delete an existing output first")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress log lines")
    index_checkpoint_s: float = Field(
        300.0, gt=0, description="save the committed-units index this often during a run, so that resuming "
        "after a crash reads only the footers of parts committed since (see extraction/state.py)"
    )
    stall_timeout_s: float = Field(
        600.0, gt=0, description="fail the job (with Ray's resource view) when no document finished for this long; "
        "covers actor start-up and model loading, so keep it well above one batch's time"
    )

    @model_validator(mode="after")
    def _check(self) -> "ExtractConfig":
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite are mutually exclusive")
        for label, value in self.thresholds.items():
            if not 0 < value < 1:
                raise ValueError(f"thresholds[{label!r}] = {value} is not in (0, 1)")
        entity = self.entity_threshold
        for name, value in (entity.items() if isinstance(entity, dict) else [("<all>", entity)]):
            if value is not None and not 0 < value < 1:
                raise ValueError(f"entity_threshold[{name!r}] = {value} is not in (0, 1)")
        return self


def load_extract_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] | None = None,
    values: dict[str, Any] | None = None,
) -> ExtractConfig:
    """YAML file (optional) <- ``key=value`` overrides <- already-typed ``values`` (dotted keys).

    ``values`` is what the CLI flags become (``{"actors.max_size": 2}``); ``None`` values are
    ignored so that an unset flag never hides the YAML value.
    """
    data = load_config_data(path, overrides, values)
    return ExtractConfig.model_validate(data)


def cli_values(
    *,
    input: str | None = None,
    output: str | None = None,
    model: str | None = None,
    labels: str | None = None,
    entity_labels: str | None = None,
    entity_recognizer: str | None = None,
    num_actors: int | None = None,
    batch_size: int | None = None,
    num_gpus_per_actor: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Map the CLI / job flags onto config keys (one mapping shared by ``glidre`` and ``jobs/``)."""
    values: dict[str, Any] = {
        "input": input, "output": output, "model": model, "labels": labels, "entity_labels": entity_labels,
        "entity_recognizer": entity_recognizer,
        "batch_size": batch_size,
        "actors.num_gpus": num_gpus_per_actor,
        "resume": True if resume else None, "overwrite": True if overwrite else None,
    }
    if num_actors is not None:
        values["actors.min_size"] = num_actors
        values["actors.max_size"] = num_actors
    return values
