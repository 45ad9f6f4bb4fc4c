"""Typed configuration of the RHF baseline (``glidre evaluate --model llm:CONFIG.yaml``).

The ``backend`` section reuses the backend configs of ``glidre distill``
(:class:`~glidre_core.llm.config.OpenAIBackendConfig`, :class:`~glidre_core.llm.config.TransformersBackendConfig`),
chosen by ``kind``; a typo in any option fails at load time with the option's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from glidre_core.llm.config import OpenAIBackendConfig, TransformersBackendConfig
from glidre_core.overrides import load_config_data

RHFBackendConfig = Annotated[OpenAIBackendConfig | TransformersBackendConfig, Field(discriminator="kind")]


class RHFError(RuntimeError):
    """The RHF baseline cannot run: missing or invalid config, a backend that cannot serve."""


class RHFPromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field("rhf-json", description="rhf-json (instruction-tuned models) or rhf-json-fewshot (base models)")
    version: int = 1


class RHFGenerationConfig(BaseModel):
    """Answer budgets per step: the answers are short JSON lists of labels or names."""

    model_config = ConfigDict(extra="forbid")
    max_tokens_relations: int = Field(256, ge=1, description="step R: the list of relation labels of one chunk")
    max_tokens_heads: int = Field(128, ge=1, description="step H: the head entities of one relation")
    max_tokens_tails: int = Field(128, ge=1, description="step F: the tail entities of one (relation, head)")
    temperature: float = Field(0.0, ge=0)
    stop: list[str] = Field(default_factory=list)


class RHFLimits(BaseModel):
    """How much work one document may cause, and what happens to long documents.

    Every item cut by a limit is counted (``dropped.over_limit``), never silently lost.
    """

    model_config = ConfigDict(extra="forbid")
    max_docs: int | None = Field(None, ge=1, description="evaluate at most this many documents (--limit also applies)")
    long_documents: Literal["chunk", "truncate"] = Field(
        "chunk", description="chunk: every chunk runs R, H and F on its own and the facts are unioned; "
                             "truncate: only the first chunk is read (a warning is logged per document)")
    chunk_chars: int = Field(6000, ge=200, description="chunks of at most this many characters, cut after a sentence end")
    max_relations_per_chunk: int | None = Field(None, ge=1, description="step R labels kept per chunk (None = all); "
                                                "each kept label costs one H request")
    max_heads_per_relation: int | None = Field(None, ge=1, description="step H heads kept per relation (None = all); "
                                               "each kept head costs one F request")
    list_entities: bool = Field(True, description="name the given entities in the H and F prompts")


class RHFConfig(BaseModel):
    """Everything an RHF evaluation needs; recorded (without secrets) in the metrics JSON."""

    model_config = ConfigDict(extra="forbid")
    backend: RHFBackendConfig = Field(default_factory=lambda: TransformersBackendConfig())
    prompt: RHFPromptConfig = Field(default_factory=RHFPromptConfig)
    generation: RHFGenerationConfig = Field(default_factory=RHFGenerationConfig)
    limits: RHFLimits = Field(default_factory=RHFLimits)
    batch_size: int = Field(16, ge=1, description="documents per batch: each step of a batch is one backend.generate call")
    check_backend: bool = Field(True, description="call backend.check() before the run (an unreachable endpoint fails fast)")


def load_rhf_config(path: str | Path, overrides: list[str] | tuple[str, ...] | None = None) -> RHFConfig:
    """The YAML at ``path`` (with ``key=value`` overrides) as an :class:`RHFConfig`; every problem
    is an :class:`RHFError` naming the file and the field."""
    p = Path(path)
    if not str(path):
        raise RHFError("--model llm:CONFIG needs a config file after 'llm:' (e.g. llm:configs/rhf_local.yaml)")
    if not p.is_file():
        raise RHFError(f"LLM config file not found: {p} (expected e.g. llm:configs/rhf_local.yaml)")
    try:
        data: dict[str, Any] = load_config_data(p, overrides)
    except Exception as exc:  # noqa: BLE001 - YAML errors, a top level that is not a mapping
        raise RHFError(f"{p}: cannot read the LLM config: {exc}") from exc
    backend = data.get("backend")
    if not isinstance(backend, dict) or "kind" not in backend:
        raise RHFError(f"{p}: the 'backend' section must be a mapping with kind: openai or kind: transformers "
                       f"(got {backend!r})")
    try:
        return RHFConfig.model_validate(data)
    except ValidationError as exc:
        raise RHFError(f"{p}: invalid LLM config: {exc}") from exc
