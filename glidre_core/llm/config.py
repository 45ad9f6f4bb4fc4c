"""Typed configuration of the LLM backends and of ``glidre distill``, loaded from YAML.

The teacher is chosen in YAML by ``teacher.kind``, a pydantic discriminated union, so a typo in
a backend's option fails at load time with the option's name, not mid-run on a worker:

* ``openai``: any OpenAI-compatible HTTP endpoint (vLLM's, TGI's or llama.cpp's server, a hosted
  API, or ``glidre llm serve``): :class:`OpenAIBackendConfig`.
* ``transformers``: an in-process causal LM (small jobs, tests): :class:`TransformersBackendConfig`.
* ``ray_vllm``: Ray Data's LLM processor with the vLLM engine on GPU workers (optional extra
  ``glidre-core[llm]``): :class:`RayVLLMBackendConfig`, one field per field of
  ``ray.data.llm.vLLMEngineProcessorConfig``.
* ``glidre``: a GLiDRE model as the teacher (self-training): :class:`GlidreTeacherConfig`.

Secrets never live here: an API key is read from the environment variable named by
``api_key_env``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from glidre_core.extraction.storage_config import StorageConfig
from glidre_core.overrides import load_config_data


class OpenAIBackendConfig(BaseModel):
    """An OpenAI-compatible endpoint (``/v1/chat/completions`` or ``/v1/completions``).

    Rate limits are for the whole job: each of the ``workers.max_size`` workers gets an equal
    share, so N workers never exceed the provider's limit together.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["openai"] = "openai"
    base_url: str = Field(..., description="e.g. http://127.0.0.1:8000/v1 (vLLM, TGI, llama.cpp, glidre llm serve)")
    model: str = Field(..., description="model name sent with every request")
    api: Literal["chat", "completions"] = Field(
        "chat", description="chat: messages through the server's chat template; completions: a plain-text prompt")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key (unset = none)")
    max_concurrency: int = Field(8, ge=1, description="requests in flight per worker")
    requests_per_minute: float | None = Field(None, gt=0, description="whole job; None = unlimited")
    tokens_per_minute: float | None = Field(None, gt=0, description="whole job (prompt + max_tokens, reconciled with usage)")
    timeout_s: float = Field(120.0, gt=0, description="per request, whole response")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(4, ge=0, description="retries after the first attempt (429, 5xx, timeouts, connection errors)")
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    json_mode: bool = Field(False, description="send response_format={'type': 'json_object'} (vLLM, OpenAI)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="more request fields (vendor options)")


class TransformersBackendConfig(BaseModel):
    """An in-process ``transformers`` causal LM. ``model`` is ``gemma-3-270m`` (the GGUF shipped
    in the optional pip packages, see :mod:`glidre_core.llm.local`), a transformers model
    directory, or a ``.gguf`` file."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["transformers"] = "transformers"
    model: str = "gemma-3-270m"
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "cpu"
    batch_size: int = Field(4, ge=1, description="sequences per generate() call")
    torch_threads: int | None = Field(None, ge=1, description="None = torch's default")
    chat_template: Literal["auto", "never"] = Field(
        "auto", description="auto: the tokenizer's chat template when it has one, else the plain prompt layout")
    cache_dir: str | None = Field(None, description="where a GGUF's dequantised copy is cached; None = ~/.cache/glidre/llm")


class RayVLLMBackendConfig(BaseModel):
    """Ray Data's LLM processor with vLLM (``ray.data.llm.vLLMEngineProcessorConfig``), for GPU
    clusters. Each field maps 1:1 onto the Ray config (:func:`glidre_core.llm.ray_llm.processor_config`
    builds it); needs the ``glidre-core[llm]`` extra (vLLM) on the workers."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["ray_vllm"] = "ray_vllm"
    model_source: str = Field(..., description="HF model id, local path or s3:// path of the weights")
    engine_kwargs: dict[str, Any] = Field(default_factory=lambda: {"max_model_len": 8192})
    concurrency: int | tuple[int, int] = Field(1, description="vLLM replicas (or (min, max) autoscaling)")
    batch_size: int = Field(32, ge=1)
    accelerator_type: str | None = Field(None, description="e.g. L4, A10G, H100; None = any GPU")
    max_concurrent_batches: int = Field(8, ge=1)
    max_pending_requests: int | None = None
    runtime_env: dict[str, Any] | None = None
    placement_group_config: dict[str, Any] | None = None
    apply_chat_template: bool = True
    should_continue_on_error: bool = Field(True, description="a failed row becomes an error row, not a failed job")


class GlidreTeacherConfig(BaseModel):
    """A GLiDRE model as the teacher (self-training): entities and relations from
    :meth:`glidre_core.inference.Predictor.extract`, kept only above high thresholds."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["glidre"] = "glidre"
    model: str = Field("default", description="directory, 'default' or models:/NAME@ALIAS")
    tracking_uri: str | None = None
    threshold: float = Field(0.8, gt=0, lt=1, description="relation threshold (high: only confident facts)")
    entity_threshold: float = Field(0.8, gt=0, lt=1, description="span threshold (high: only confident entities)")
    entity_recognizer: Literal["model", "spacy"] = "model"
    batch_size: int = Field(8, ge=1)
    device: str = "cpu"


TeacherConfig = Annotated[
    OpenAIBackendConfig | TransformersBackendConfig | RayVLLMBackendConfig | GlidreTeacherConfig,
    Field(discriminator="kind"),
]


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A gold Re-DocRED answer in the kg-json format is 1,376 tokens on average (max 3,962) for
    # documents of 1,108 characters on average (benchmarks/results/distill_throughput.json):
    # about 1,250 answer tokens per 1,000 characters of densely annotated text. 1024 would cut it.
    max_tokens: int = Field(2048, ge=1, description="per chunk answer")
    temperature: float = Field(0.0, ge=0)
    stop: list[str] = Field(default_factory=list)


class PromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = "kg-json"
    version: int = 1


class WorkerConfig(BaseModel):
    """The teacher actor pool: each actor builds its backend once (loads a model, opens a client)."""

    model_config = ConfigDict(extra="forbid")
    min_size: int = Field(1, ge=1)
    max_size: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0, description="per actor; an HTTP client mostly waits: 0.25 is enough")
    num_gpus: float = Field(0.0, ge=0)
    max_tasks_in_flight: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _sizes(self) -> "WorkerConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"workers.min_size ({self.min_size}) > workers.max_size ({self.max_size})")
        return self


class DistillRayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="None = RAY_ADDRESS / a running cluster / start a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a Ray started by the job")


class DistillConfig(BaseModel):
    """Everything a ``glidre distill`` run needs; stored (without secrets) in ``_manifest.json``."""

    model_config = ConfigDict(extra="forbid")
    input: str = Field(..., description="JSON Lines file, directory or s3:// prefix: one {doc_id, text} per line")
    output: str = Field(..., description="directory or s3:// prefix")
    teacher: TeacherConfig = Field(default_factory=lambda: TransformersBackendConfig())
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    entity_types: list[str] | None = Field(None, description="types named in the prompt; None = any")
    relation_types: list[str] | None = Field(None, description="labels named in the prompt; None = free text")
    chunk_chars: int = Field(1500, ge=200, description="documents are cut into chunks of at most this many characters "
                             "(a dense answer for 1,500 characters is about 1,900 tokens: keep it under max_tokens)")
    max_text_chars: int = Field(200_000, ge=1, description="longer documents go to errors/")
    strict: bool = Field(False, description="fail a document on any invalid item instead of dropping the item")
    batch_size: int = Field(8, ge=1, description="documents per actor call")
    lines_per_block: int = Field(256, ge=1, description="records per read block")
    read_num_cpus: float = Field(0.25, gt=0, description="CPUs per read / write task")
    merge_output: bool = Field(True, description="also write <output>/distilled.jsonl, one file for the trainer")
    workers: WorkerConfig = Field(default_factory=WorkerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: DistillRayConfig = Field(default_factory=DistillRayConfig)
    resume: bool = Field(False, description="continue an interrupted run of the same settings: documents already "
                         "in documents/ or errors/ are not sent to the teacher again")
    overwrite: bool = Field(False, description="delete an existing output first")
    progress_interval_s: float = Field(10.0, gt=0)
    stall_timeout_s: float = Field(1800.0, gt=0, description="fail with Ray's resource view when nothing finished for this long")
    index_checkpoint_s: float = Field(
        300.0, gt=0, description="save the committed-units index this often during a run, so that resuming after a "
        "crash reads only the ledger footers of parts committed since (see extraction/state.py)")

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite are mutually exclusive")
        return self


def load_distill_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] | None = None,
                        values: dict[str, Any] | None = None) -> DistillConfig:
    """YAML (optional) <- ``key=value`` overrides <- typed ``values`` (dotted keys; None ignored).

    ``teacher: model:DIR`` (a string) is shorthand for ``{kind: glidre, model: DIR}``.
    """
    data = load_config_data(path, overrides, values)
    teacher = data.get("teacher")
    if isinstance(teacher, str):
        data["teacher"] = teacher_shorthand(teacher)
    return DistillConfig.model_validate(data)


def teacher_shorthand(spec: str) -> dict[str, Any]:
    """``model:DIR`` / ``model:default`` -> a GLiDRE teacher; ``gguf:PATH`` / ``hf:DIR`` -> the
    in-process backend; ``http://...`` -> an OpenAI-compatible endpoint (model name ``default``)."""
    if spec.startswith("model:"):
        return {"kind": "glidre", "model": spec[len("model:"):]}
    if spec.startswith(("hf:", "gguf:")):
        return {"kind": "transformers", "model": spec.split(":", 1)[1]}
    if spec.startswith(("http://", "https://")):
        return {"kind": "openai", "base_url": spec, "model": "default"}
    raise ValueError(f"teacher {spec!r}: expected model:DIR, model:default, hf:DIR, gguf:PATH or an http(s):// URL")
