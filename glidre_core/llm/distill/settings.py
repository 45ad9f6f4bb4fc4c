"""What every part of the distill job shares: the output layout, the result-row schema
(:data:`RESULT`), the settings shipped to the workers (:class:`DistillSettings`), the input
records (:class:`DocInput`, :func:`parse_input`) and the result rows built from a teacher's
answers (:func:`result_from_chunks`, :func:`input_error_row`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from glidre_core.llm.base import Completion, Usage
from glidre_core.llm.config import DistillConfig, GenerationConfig
from glidre_core.llm.parsing import BACKEND, INPUT, AnswerError, build_document, chunk_spans, read_chunk_answer
from glidre_core.llm.prompts import Prompt, get_prompt

DOCUMENTS_DIR, ERRORS_DIR = "documents", "errors"
#: one Parquet file per committed part (see DistillSink); what --resume reads
LEDGER_DIR = "_ledger"
MERGED_FILE, MANIFEST_FILE, RUN_STATE_FILE = "distilled.jsonl", "_manifest.json", "_run.json"
OUTPUT_VERSION = 1

#: One result row per input record (the actors' output, the sink's input).
RESULT = pa.schema([
    ("key", pa.string()), ("doc_id", pa.string()), ("source", pa.string()), ("line", pa.int64()),
    ("status", pa.string()), ("document", pa.string()),
    ("error_type", pa.string()), ("field", pa.string()), ("message", pa.string()),
    ("raw_answers", pa.list_(pa.string())),
    ("chunks", pa.int32()), ("entities", pa.int32()), ("relations", pa.int32()),
    ("dropped_entities", pa.int32()), ("dropped_relations", pa.int32()), ("dropped_items", pa.int32()),
    ("repairs", pa.list_(pa.string())),
    ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("attempts", pa.int32()),
    ("latency_s", pa.float64()),
    # the record's input unit (the reader's block), recorded in the ledger for --resume
    ("block", pa.int64()), ("block_size", pa.int64()), ("block_last", pa.bool_()),
])
OK, ERROR = "ok", "error"


class DistillError(RuntimeError):
    """A whole-run failure (bad input location, existing output, teacher unusable)."""


# -- settings shipped to the workers ------------------------------------------------------------
@dataclass(frozen=True)
class DistillSettings:
    """What every worker needs besides its teacher (small and picklable)."""

    teacher: str  # the teacher's name, recorded in each document's provenance
    prompt_id: str
    prompt_version: int
    generation: GenerationConfig
    entity_types: tuple[str, ...] | None
    relation_types: tuple[str, ...] | None
    chunk_chars: int
    max_text_chars: int
    strict: bool

    @classmethod
    def from_config(cls, cfg: DistillConfig, teacher: str) -> "DistillSettings":
        return cls(teacher, cfg.prompt.id, cfg.prompt.version, cfg.generation,
                   tuple(cfg.entity_types) if cfg.entity_types else None,
                   tuple(cfg.relation_types) if cfg.relation_types else None,
                   cfg.chunk_chars, cfg.max_text_chars, cfg.strict)

    @property
    def prompt(self) -> Prompt:
        return get_prompt(self.prompt_id, self.prompt_version)

    def render(self, chunk_text: str) -> Any:
        return self.prompt.render(chunk_text, self.entity_types, self.relation_types)


@dataclass
class DocInput:
    """One usable input document and its chunks."""

    key: str  # source:line, unique per input record (doc ids may repeat across files)
    doc_id: str
    text: str
    source: str
    line: int | None
    spans: list[tuple[int, int]] = field(default_factory=list)
    # the input unit the reader put the record in (see glidre_core.extraction.state): carried to
    # the sink's ledger, so that --resume knows which records are done
    block: int | None = None
    block_size: int | None = None
    block_last: bool | None = None


# -- result rows ---------------------------------------------------------------------------------
def result_row(doc: DocInput, status: str, **values: Any) -> dict[str, Any]:
    """One :data:`RESULT` row for ``doc`` (zero counts, its input unit), updated with ``values``."""
    row: dict[str, Any] = {name: None for name in RESULT.names}
    row.update({"key": doc.key, "doc_id": doc.doc_id, "source": doc.source, "line": doc.line, "status": status,
                "raw_answers": [], "repairs": [], "chunks": len(doc.spans), "entities": 0, "relations": 0,
                "dropped_entities": 0, "dropped_relations": 0, "dropped_items": 0, "prompt_tokens": 0,
                "completion_tokens": 0, "attempts": 0, "latency_s": 0.0,
                "block": doc.block, "block_size": doc.block_size, "block_last": doc.block_last})
    row.update(values)
    return row


def input_error_row(doc: DocInput, field_name: str, message: str, settings: DistillSettings | None = None) -> dict[str, Any]:
    return result_row(doc, ERROR, error_type=INPUT, field=field_name, message=message, chunks=0)


def provenance(doc: DocInput, settings: DistillSettings, usage: Usage, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    prompt = settings.prompt
    out = {"teacher": settings.teacher, "prompt": prompt.key, "prompt_fingerprint": prompt.fingerprint,
           "source": doc.source, "line": doc.line, "chunks": len(doc.spans),
           "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
           "version": OUTPUT_VERSION}
    out.update(extra or {})
    return out


def result_from_chunks(doc: DocInput, completions: Sequence[Completion], settings: DistillSettings) -> dict[str, Any]:
    """Parse, validate and merge one document's chunk answers into its result row."""
    usage = Usage()
    for c in completions:
        usage.add(c.usage)
    raws = [c.text for c in completions]
    common = {"raw_answers": raws, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
              "attempts": sum(c.attempts for c in completions), "latency_s": max((c.latency_s for c in completions), default=0.0)}
    failed = [(i, c) for i, c in enumerate(completions) if c.error]
    if failed:
        i, c = failed[0]
        return result_row(doc, ERROR, error_type=BACKEND, field=f"chunks[{i}]",
                    message=f"the teacher request failed: {c.error}", **common)
    try:
        answers = [read_chunk_answer(c.text, doc.doc_id, i) for i, c in enumerate(completions)]
        cut = [i for i, c in enumerate(completions) if c.finish_reason == "length"]
        built = build_document(doc.doc_id, doc.text, list(zip(doc.spans, answers)), strict=settings.strict,
                               raw=raws[0] if len(raws) == 1 else json.dumps(raws, ensure_ascii=False),
                               extra={"distill": provenance(doc, settings, usage,
                                                            {"cut_by_max_tokens": cut} if cut else None)})
    except AnswerError as exc:
        return result_row(doc, ERROR, error_type=exc.error_type, field=exc.field, message=exc.message, **common)
    return result_row(doc, OK, document=json.dumps(built.record, ensure_ascii=False), entities=built.n_entities,
                relations=built.n_relations, dropped_entities=len(built.dropped_entities),
                dropped_relations=len(built.dropped_relations), dropped_items=len(built.dropped_items),
                repairs=built.repairs, **{**common, "raw_answers": []})


def parse_input(source: str, line: int | None, raw: bytes, settings: DistillSettings) -> DocInput | dict[str, Any]:
    """One raw input record -> a :class:`DocInput` with its chunks, or an ``InputError`` row."""
    from glidre_core.extraction.source import fallback_id

    key = f"{source}:{line}" if line is not None else fallback_id(source, None, raw)
    doc = DocInput(key=key, doc_id=fallback_id(source, line, raw), text="", source=source, line=line)
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return input_error_row(doc, "<line>", f"not valid JSON: {exc}")
    if not isinstance(rec, dict):
        return input_error_row(doc, "<root>", f"expected a JSON object, got {type(rec).__name__}")
    ident = rec.get("doc_id", rec.get("id"))
    if ident is not None and str(ident).strip():
        doc.doc_id = str(ident)
    text = rec.get("text")
    if not isinstance(text, str) or not text.strip():
        return input_error_row(doc, "text", "missing or empty text" if not isinstance(text, str) or not text
                               else "text is only whitespace")
    if len(text) > settings.max_text_chars:
        return input_error_row(doc, "text", f"{len(text)} characters, above max_text_chars={settings.max_text_chars}")
    doc.text = text
    doc.spans = chunk_spans(text, settings.chunk_chars)
    return doc
