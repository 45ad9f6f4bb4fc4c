"""The teachers: a batch of :class:`~.settings.DocInput` in, one result row per document out.
:class:`LLMTeacher` prompts an LLM backend (OpenAI-compatible HTTP or in-process
transformers), :class:`GlidreTeacher` runs a GLiDRE model (the ``model:`` teacher)."""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from glidre_core.llm.base import GenerationRequest, LLMBackend, Usage
from glidre_core.llm.config import (
    GlidreTeacherConfig, OpenAIBackendConfig, RayVLLMBackendConfig, TransformersBackendConfig,
)
from glidre_core.llm.distill.settings import (
    BACKEND, ERROR, OK, DistillSettings, DocInput, provenance, result_from_chunks, result_row,
)

logger = logging.getLogger(__name__)


class Teacher(ABC):
    """Labels a batch of documents; one result row per document, in order. The interface of
    the LLM teacher and the GLiDRE teacher."""

    name = "teacher"

    @abstractmethod
    def annotate(self, docs: Sequence[DocInput]) -> list[dict[str, Any]]:
        """One result row per document of ``docs``, in order."""

    def close(self) -> None:
        pass


class LLMTeacher(Teacher):
    """Prompts an :class:`LLMBackend` with every chunk of a batch in one ``generate`` call."""

    def __init__(self, backend: LLMBackend, settings: DistillSettings):
        self.backend = backend
        self.settings = settings
        self.name = backend.name

    def requests(self, doc: DocInput) -> list[GenerationRequest]:
        gen = self.settings.generation
        return [GenerationRequest(f"{doc.key}#{i}", self.settings.render(doc.text[s:e]), gen.max_tokens,
                                  gen.temperature, tuple(gen.stop), json_mode=True)
                for i, (s, e) in enumerate(doc.spans)]

    def annotate(self, docs: Sequence[DocInput]) -> list[dict[str, Any]]:
        per_doc = [self.requests(d) for d in docs]
        flat = [r for rs in per_doc for r in rs]
        done = {c.request_id: c for c in self.backend.generate(flat)}
        return [result_from_chunks(d, [done[r.request_id] for r in rs], self.settings) for d, rs in zip(docs, per_doc)]

    def close(self) -> None:
        self.backend.close()


class GlidreTeacher(Teacher):
    """A GLiDRE model as the teacher, through the public inference layer
    (:meth:`glidre_core.inference.Predictor.extract`), with high thresholds so that only
    confident entities and relations become training data."""

    def __init__(self, cfg: GlidreTeacherConfig, settings: DistillSettings):
        from glidre_core.inference import Predictor
        from glidre_core.model_loading import load_model

        self.cfg = cfg
        self.settings = settings
        model = load_model(cfg.model, cfg.device, cfg.tracking_uri)
        self.predictor = Predictor(
            model, relation_labels=list(settings.relation_types) if settings.relation_types else None,
            entity_labels=list(settings.entity_types) if settings.entity_types else None,
            threshold=cfg.threshold, entity_threshold=cfg.entity_threshold, batch_size=cfg.batch_size,
            need_entity_types=True, entity_recognizer=cfg.entity_recognizer,
        )
        self.name = settings.teacher

    def _extract(self, docs: Sequence[DocInput]) -> list[Any]:
        from glidre_core.documents import parse_document

        return self.predictor.extract([parse_document({"doc_id": d.doc_id, "text": d.text}) for d in docs])

    def annotate(self, docs: Sequence[DocInput]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            results: list[Any] = self._extract(docs)
        except Exception:  # noqa: BLE001 - isolate the failing document(s) by running one at a time
            logger.warning("GLiDRE teacher failed on a batch of %d; retrying one by one", len(docs), exc_info=True)
            results = []
            for d in docs:
                try:
                    results.append(self._extract([d])[0])
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
        latency = (time.perf_counter() - t0) / max(1, len(docs))
        rows = []
        for d, res in zip(docs, results):
            d.spans = [(0, len(d.text))]
            if isinstance(res, Exception):
                rows.append(result_row(d, ERROR, error_type=BACKEND, field="text",
                                 message=f"the GLiDRE teacher failed: {type(res).__name__}: {res}", latency_s=latency))
                continue
            doc = res.document
            record = {
                "doc_id": d.doc_id, "text": d.text,
                "entities": [{"id": e.id, "name": doc.entity_text(e), "type": e.type,
                              "mentions": [{"start": m.start, "end": m.end} for m in e.mentions]} for e in doc.entities],
                "relations": [{"head": r.head, "label": r.label, "tail": r.tail} for r in doc.relations],
                "distill": provenance(d, self.settings, Usage(), {"threshold": self.cfg.threshold,
                                                                  "entity_threshold": self.cfg.entity_threshold}),
            }
            rows.append(result_row(d, OK, document=json.dumps(record, ensure_ascii=False), entities=len(doc.entities),
                             relations=len(doc.relations), latency_s=latency, attempts=1))
        return rows


def build_backend(cfg: OpenAIBackendConfig | TransformersBackendConfig, share: float = 1.0) -> LLMBackend:
    """The backend object for an LLM teacher config (``ray_vllm`` is a Ray Data stage instead)."""
    if isinstance(cfg, OpenAIBackendConfig):
        from glidre_core.llm.http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(cfg, share)
    if isinstance(cfg, TransformersBackendConfig):
        from glidre_core.llm.local import TransformersBackend

        return TransformersBackend(cfg)
    raise TypeError(f"no backend object for teacher kind {getattr(cfg, 'kind', cfg)!r}")


def build_teacher(cfg: Any, settings: DistillSettings, share: float = 1.0) -> Teacher:
    if isinstance(cfg, GlidreTeacherConfig):
        return GlidreTeacher(cfg, settings)
    return LLMTeacher(build_backend(cfg, share), settings)


def teacher_name(cfg: Any) -> str:
    if isinstance(cfg, OpenAIBackendConfig):
        return f"openai:{cfg.base_url.rstrip('/')} model={cfg.model}"
    if isinstance(cfg, TransformersBackendConfig):
        return f"transformers:{cfg.model}"
    if isinstance(cfg, RayVLLMBackendConfig):
        return f"ray_vllm:{cfg.model_source}"
    return f"glidre:{cfg.model}"
