"""``glidre distill``: a raw corpus in, a GLiDRE training corpus out, labelled by a teacher.

Input: JSON Lines (or Parquet) records ``{"doc_id": ..., "text": ...}``, local or ``s3://``.
Output under the output prefix:

* ``documents/*.jsonl``: one GLiDRE document per line (``doc_id``, ``text``, ``entities`` with
  character-offset ``mentions``, ``relations`` with free-text ``label``), plus a ``distill`` field
  with its provenance (teacher, prompt ``id@vN`` and fingerprint, input file and line, tokens).
  The training reader ignores that field.
* ``distilled.jsonl``: the same documents in one file (``merge_output``), which is what
  ``configs/pretrain.yaml`` reads unchanged (``--set train.path=OUTPUT/distilled.jsonl``).
* ``errors/*.jsonl``: one row per document that could not be distilled: ``doc_id``, input file
  and line, ``error_type`` (see :mod:`glidre_core.llm.parsing`), ``field``, ``message`` and the
  teacher's raw answers (``raw_answers``, one per chunk), with the tokens it cost.
* ``_ledger/*.parquet``: one file per committed part (its records' input units, with the part's
  summary in the footer), ``_state/`` (the committed-units index) and ``_run.json`` (the settings
  the run started with): the bookkeeping of ``--resume``.
* ``_manifest.json`` (written last): ``docs_read = docs_written + docs_errored`` over the whole
  output, checked against the lines on disk, ``docs_skipped_resume``, plus teacher, prompt, token
  totals and throughput (tokens and throughput are this run's: what it cost).

Resume (decision): the extract job's machinery, not a second one. A write task's rows are one
*part*: its ``documents/`` and ``errors/`` files, then its ledger file, which commits it (the
protocol of :mod:`glidre_core.extraction.output`); the driver keeps the committed-units index and
plans the resume with the public functions of :mod:`glidre_core.extraction.state`
(``sync_index``, ``open_index``, ``resume_plan``, ``check_resume_settings``). So ``--resume``
sends to the teacher only the records no committed part holds (complete input files are not
even opened), deletes the files of parts that never committed (their records are redone), and
the merged ``distilled.jsonl`` is rebuilt from the committed parts: each document once. Why the
extract protocol: the teacher is the expensive part (tokens, GPU hours), so an interrupted run
must never pay twice for a document, and the bookkeeping must stay O(input units), not
O(documents). A resume whose settings differ (:data:`RESUME_KEYS`: teacher, prompt and its
fingerprint, generation, types, chunking, limits) is refused naming the setting; where the
teacher runs (endpoint, device, concurrency) may change. ``--resume`` on an empty output starts
fresh; ``--resume`` with ``--overwrite`` is a configuration error.

Plan (Ray Data, streaming), for the in-process, HTTP and GLiDRE teachers::

    read (the extract job's JSON Lines / Parquet record reader: one bad line is one error row)
      -> map_batches(DistillWorker, ActorPoolStrategy)   each actor builds its teacher once;
                                                          a batch's prompts go to the backend together
      -> write_datasink(DistillSink)                      JSON Lines parts, each committed by its ledger

and for ``ray_vllm`` (see :mod:`glidre_core.llm.ray_llm`): read -> chunk rows -> Ray's vLLM
processor -> ``groupby(key)`` -> merge -> the same sink. Every input record yields exactly one
result row, ok or error: per-record failures are caught where they happen, never allowed to
fail a batch.

What is checked on the driver before Ray starts: the input has files, the output is new (or
``overwrite``, or ``resume`` with the same settings), the prompt exists, and the teacher works:
an HTTP endpoint answers ``/models``, an in-process model resolves (a GGUF is converted and
cached here, once, so the actors only load the cache), a GLiDRE model loads with its label sets.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
import json
import logging
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from ray.data.datasource.datasink import Datasink

from glidre_core.llm.base import Completion, GenerationRequest, LLMBackend, Usage
from glidre_core.llm.config import (
    DistillConfig, GenerationConfig, GlidreTeacherConfig, OpenAIBackendConfig, RayVLLMBackendConfig,
    TransformersBackendConfig,
)
from glidre_core.llm.parsing import (
    BACKEND, INPUT, AnswerError, build_document, chunk_spans, read_chunk_answer,
)
from glidre_core.llm.prompts import Prompt, get_prompt

logger = logging.getLogger(__name__)

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
def _row(doc: DocInput, status: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in RESULT.names}
    row.update({"key": doc.key, "doc_id": doc.doc_id, "source": doc.source, "line": doc.line, "status": status,
                "raw_answers": [], "repairs": [], "chunks": len(doc.spans), "entities": 0, "relations": 0,
                "dropped_entities": 0, "dropped_relations": 0, "dropped_items": 0, "prompt_tokens": 0,
                "completion_tokens": 0, "attempts": 0, "latency_s": 0.0,
                "block": doc.block, "block_size": doc.block_size, "block_last": doc.block_last})
    row.update(values)
    return row


def input_error_row(doc: DocInput, field_name: str, message: str, settings: DistillSettings | None = None) -> dict[str, Any]:
    return _row(doc, ERROR, error_type=INPUT, field=field_name, message=message, chunks=0)


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
        return _row(doc, ERROR, error_type=BACKEND, field=f"chunks[{i}]",
                    message=f"the teacher request failed: {c.error}", **common)
    try:
        answers = [read_chunk_answer(c.text, doc.doc_id, i) for i, c in enumerate(completions)]
        cut = [i for i, c in enumerate(completions) if c.finish_reason == "length"]
        built = build_document(doc.doc_id, doc.text, list(zip(doc.spans, answers)), strict=settings.strict,
                               raw=raws[0] if len(raws) == 1 else json.dumps(raws, ensure_ascii=False),
                               extra={"distill": provenance(doc, settings, usage,
                                                            {"cut_by_max_tokens": cut} if cut else None)})
    except AnswerError as exc:
        return _row(doc, ERROR, error_type=exc.error_type, field=exc.field, message=exc.message, **common)
    return _row(doc, OK, document=json.dumps(built.record, ensure_ascii=False), entities=built.n_entities,
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


# -- teachers --------------------------------------------------------------------------------------
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
                rows.append(_row(d, ERROR, error_type=BACKEND, field="text",
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
            rows.append(_row(d, OK, document=json.dumps(record, ensure_ascii=False), entities=len(doc.entities),
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


# -- Ray Data stages -----------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULT)


def prepare_records(batch: pa.Table, settings: DistillSettings) -> list[DocInput | dict[str, Any]]:
    """RECORD rows (source, line, raw, and the input unit) -> documents or InputError rows."""
    out: list[DocInput | dict[str, Any]] = []
    n = batch.num_rows
    units = [batch.column(c).to_pylist() if c in batch.column_names else [None] * n
             for c in ("block", "block_size", "block_last")]
    for source, line, raw, *unit in zip(batch.column("source").to_pylist(), batch.column("line").to_pylist(),
                                        batch.column("raw").to_pylist(), *units):
        unit_fields = dict(zip(("block", "block_size", "block_last"), unit))
        try:
            item = parse_input(source, line, raw, settings)
        except Exception as exc:  # noqa: BLE001 - never lose a record
            doc = DocInput(f"{source}:{line}", f"{source}:{line}", "", source, line)
            item = input_error_row(doc, "<root>", f"{type(exc).__name__}: {exc}")
        if isinstance(item, DocInput):
            item.block, item.block_size, item.block_last = unit
        else:
            item.update(unit_fields)
        out.append(item)
    return out


class DistillWorker:
    """The actor of the pool: builds its teacher once, then labels batches of records."""

    def __init__(self, teacher: Any, settings: DistillSettings, share: float = 1.0, progress: Any = None):
        self.settings = settings
        self.teacher = build_teacher(teacher, settings, share)
        self.progress = progress
        self.actor_id = uuid.uuid4().hex[:8]

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = prepare_records(batch, self.settings)
        docs = [i for i in items if isinstance(i, DocInput)]
        try:
            labelled = iter(self.teacher.annotate(docs)) if docs else iter(())
        except Exception as exc:  # noqa: BLE001 - a teacher bug fails this batch's documents, not the job
            logger.exception("teacher failed on a batch of %d documents", len(docs))
            labelled = iter(_row(d, ERROR, error_type=BACKEND, field="<teacher>",
                                 message=f"{type(exc).__name__}: {exc}") for d in docs)
        rows = [next(labelled) if isinstance(i, DocInput) else i for i in items]
        if self.progress is not None:
            ok = sum(r["status"] == OK for r in rows)
            try:
                self.progress.add.remote(self.actor_id, {"extracted": ok, "failed": len(rows) - ok,
                                                         "triplets": sum(r["relations"] or 0 for r in rows)})
            except Exception:  # noqa: BLE001 - progress is best effort
                logger.debug("progress report failed", exc_info=True)
        return _table(rows)


def chunk_batch(batch: pa.Table, settings: DistillSettings) -> list[dict[str, Any]]:
    """``ray_vllm`` path: RECORD rows -> one processor row per chunk (see ray_llm.chunk_rows)."""
    from glidre_core.llm.ray_llm import chunk_rows

    records = []
    for item in prepare_records(batch, settings):
        if isinstance(item, DocInput):
            records.append({"key": item.key, "doc_id": item.doc_id, "source": item.source, "line": item.line,
                            "text": item.text, "spans": item.spans, "input_error": "", "input_field": "",
                            "block": item.block, "block_size": item.block_size, "block_last": item.block_last})
        else:
            records.append({"key": item["key"], "doc_id": item["doc_id"], "source": item["source"],
                            "line": item["line"], "text": "", "spans": [], "input_error": item["message"],
                            "input_field": item["field"], "block": item["block"], "block_size": item["block_size"],
                            "block_last": item["block_last"]})
    return chunk_rows(records, settings.render, settings.generation)


# -- the sink ------------------------------------------------------------------------------------
def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def error_record(row: dict[str, Any], settings_teacher: str, prompt_key: str) -> dict[str, Any]:
    """An ``errors/`` line: where, what, and the raw answers."""
    return {"doc_id": row["doc_id"], "source": row["source"], "line": row["line"], "error_type": row["error_type"],
            "field": row["field"], "message": row["message"], "raw_answers": row["raw_answers"] or [],
            "chunks": row["chunks"], "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
            "attempts": row["attempts"], "teacher": settings_teacher, "prompt": prompt_key}


def ledger_table(rows: Sequence[dict[str, Any]], run_id: str) -> pa.Table:
    """The ledger of one part: one row per input record it holds (ok or error), with the record's
    input unit; :func:`~glidre_core.extraction.state.committed_lines` reads ``source``, ``block``
    and ``line`` from it when a resumed run must skip part of a unit."""
    return pa.table({
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "doc_id": pa.array([r["doc_id"] for r in rows], pa.string()),
        "status": pa.array([r["status"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "line": pa.array([r["line"] for r in rows], pa.int64()),
        "block": pa.array([r["block"] for r in rows], pa.int64()),
        "block_size": pa.array([r["block_size"] for r in rows], pa.int64()),
        "block_last": pa.array([r["block_last"] for r in rows], pa.bool_()),
        "run_id": pa.array([run_id] * len(rows), pa.string()),
    })


class DistillSink(Datasink):
    """Writes each write task's rows as one committed part: a ``documents/`` and an ``errors/``
    JSON Lines file, then, last, its ledger ``_ledger/<part>.parquet`` (the commit, with the
    part's summary in its footer: see :mod:`glidre_core.extraction.state`). Part names are
    derived from the run, the task and the rows, so a retried task overwrites its own parts
    instead of adding new ones."""

    def __init__(self, fs: pafs.FileSystem, root: str, run_id: str, teacher: str, prompt_key: str, progress: Any = None):
        self.fs, self.root, self.run_id = fs, root, run_id
        self.teacher, self.prompt_key = teacher, prompt_key
        self.progress = progress
        self.results: list[dict[str, Any]] = []

    @property
    def supports_distributed_writes(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)  # a local output exists on the driver's node only

    def on_write_start(self, schema: Any = None) -> None:
        from glidre_core.extraction.storage import ensure_dir

        for d in (DOCUMENTS_DIR, ERRORS_DIR, LEDGER_DIR):
            ensure_dir(self.fs, posixpath.join(self.root, d))

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor

        from glidre_core.extraction.state import new_part_summary, summary_metadata
        from glidre_core.extraction.storage import ensure_dir, write_bytes

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        rows = [r for t in tables if t.num_rows for r in t.to_pylist()]
        keys = [r["key"] for r in rows]
        digest = hashlib.sha1("\x00".join(keys).encode("utf-8")).hexdigest()[:12]
        part = f"{self.run_id}-{getattr(ctx, 'task_idx', 0):05d}-{digest}"
        docs = [r["document"] for r in rows if r["status"] == OK]
        errs = [json.dumps(error_record(r, self.teacher, self.prompt_key), ensure_ascii=False)
                for r in rows if r["status"] != OK]
        files = {}
        for name, lines in ((DOCUMENTS_DIR, docs), (ERRORS_DIR, errs)):
            if lines:
                path = posixpath.join(self.root, name, f"{part}.jsonl")
                write_bytes(self.fs, path, ("\n".join(lines) + "\n").encode("utf-8"))
                files[path] = len(lines)
        summary = None
        if rows:  # the ledger LAST: it commits the part
            ledger = ledger_table(rows, self.run_id)
            summary = new_part_summary(part, self.run_id, {
                "extracted": len(docs), "failed": len(errs), "errors": len(errs),
                "entities": sum(int(r["entities"] or 0) for r in rows if r["status"] == OK),
                "triplets": sum(int(r["relations"] or 0) for r in rows if r["status"] == OK)}, ledger)
            ledger_dir = posixpath.join(self.root, LEDGER_DIR)
            ensure_dir(self.fs, ledger_dir)
            pq.write_table(ledger.replace_schema_metadata(summary_metadata(summary)),
                           posixpath.join(ledger_dir, f"{part}.parquet"), filesystem=self.fs)
        stats: Counter = Counter()
        for r in rows:
            stats["docs"] += 1
            stats["ok" if r["status"] == OK else "errored"] += 1
            for k in ("entities", "relations", "dropped_entities", "dropped_relations", "dropped_items",
                      "prompt_tokens", "completion_tokens", "attempts", "chunks"):
                stats[k] += int(r[k] or 0)
            if r["status"] == OK and not r["relations"]:
                stats["ok_without_relations"] += 1
            if r["status"] != OK:
                stats[f"error:{r['error_type']}"] += 1
            for rep in r["repairs"] or []:
                stats[f"repair:{rep}"] += 1
        if self.progress is not None and summary is not None:
            try:  # the summary also feeds the driver's index checkpoints
                self.progress.add_committed.remote(len(rows), summary)
            except Exception:  # noqa: BLE001
                logger.debug("progress report failed", exc_info=True)
        return {"stats": dict(stats), "files": files, "summary": summary,
                "keys": np.fromiter((_key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))}

    def on_write_complete(self, write_result: Any) -> None:
        self.results.extend(r for r in write_result.write_returns if r)


# -- the job -------------------------------------------------------------------------------------
#: Settings that must match between an interrupted run and its ``--resume``: everything that
#: changes what a document's line in ``documents/`` or ``errors/`` says (see :meth:`_Setup.run_settings`).
RESUME_KEYS = ("teacher", "prompt", "prompt_fingerprint", "generation", "entity_types", "relation_types",
               "chunk_chars", "max_text_chars", "strict", "lines_per_block", "output_version")

#: Per teacher kind, the options that only say where and how fast the teacher runs, never what it
#: answers: they may change between a run and its resume (a moved endpoint, another GPU count).
#: Every other option (a new one too) must match.
OPERATIONAL_TEACHER_OPTIONS: dict[str, frozenset[str]] = {
    "openai": frozenset({"base_url", "api_key_env", "max_concurrency", "requests_per_minute", "tokens_per_minute",
                         "timeout_s", "connect_timeout_s", "max_retries", "backoff_initial_s", "backoff_max_s"}),
    "transformers": frozenset({"device", "batch_size", "torch_threads", "cache_dir"}),
    "ray_vllm": frozenset({"concurrency", "batch_size", "accelerator_type", "max_concurrent_batches",
                           "max_pending_requests", "runtime_env", "placement_group_config",
                           "should_continue_on_error"}),
    "glidre": frozenset({"tracking_uri", "batch_size", "device"}),
}


def teacher_settings(cfg: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The teacher options a resumed run must share (see :data:`OPERATIONAL_TEACHER_OPTIONS`);
    for a GLiDRE teacher also the label sets it resolved (``info``), so that another model saved
    under the same path is noticed when its labels differ."""
    out = cfg.model_dump(mode="json", exclude=set(OPERATIONAL_TEACHER_OPTIONS.get(cfg.kind, ())))
    if isinstance(cfg, GlidreTeacherConfig) and info:
        out["relation_labels"] = info.get("relation_labels")
        out["entity_types"] = info.get("entity_types")
    return out


def _lines(fs: pafs.FileSystem, path: str) -> int:
    with fs.open_input_stream(path) as f:
        n = 0
        while chunk := f.read(8 << 20):
            n += chunk.count(b"\n")
    return n


def _error_lines(fs: pafs.FileSystem, path: str) -> tuple[int, Counter]:
    """Lines of an ``errors/`` part and their ``error_type`` counts (an unreadable line counts as
    ``<unreadable>``: the count of lines must stay exact)."""
    types: Counter = Counter()
    with fs.open_input_stream(path) as f:
        data = f.read()
    for line in data.splitlines():
        try:
            types[json.loads(line).get("error_type") or "<none>"] += 1
        except (ValueError, AttributeError):
            types["<unreadable>"] += 1
    return data.count(b"\n"), types


def _list(fs: pafs.FileSystem, directory: str) -> list[str]:
    from glidre_core.extraction.state import list_parts

    return list_parts(fs, directory, ".jsonl")


def merge_parts(fs: pafs.FileSystem, parts: Sequence[str], target: str) -> tuple[dict[str, int], int]:
    """Concatenate ``parts`` into ``target`` (streamed; atomic rename on a local disk).
    Returns the lines of each part and the bytes written."""
    from glidre_core.extraction.storage import ensure_dir

    ensure_dir(fs, posixpath.dirname(target))
    local = isinstance(fs, pafs.LocalFileSystem)
    tmp = f"{target}.tmp-{uuid.uuid4().hex[:6]}" if local else target
    lines: dict[str, int] = {}
    size = 0
    with fs.open_output_stream(tmp) as out:
        for part in parts:
            lines[part] = 0
            with fs.open_input_stream(part) as f:
                while chunk := f.read(8 << 20):
                    out.write(chunk)
                    lines[part] += chunk.count(b"\n")
                    size += len(chunk)
    if local:
        fs.move(tmp, target)
    return lines, size


class _Setup:
    """Everything checked on the driver before Ray work starts."""

    def __init__(self, cfg: DistillConfig):
        from glidre_core.extraction.source import discover_input_files, relative_source
        from glidre_core.extraction.storage import Storage, check_bucket

        self.cfg = cfg
        self.storage = Storage(cfg.storage)
        self.input = self.storage.location(cfg.input)
        self.output = self.storage.location(cfg.output)
        try:
            self.prompt = get_prompt(cfg.prompt.id, cfg.prompt.version)
        except KeyError as exc:
            raise DistillError(str(exc.args[0])) from None
        try:
            infos, self.format = discover_input_files(self.input, "auto")
        except Exception as exc:  # noqa: BLE001 - InputError or an OSError from the store
            raise DistillError(str(exc)) from exc
        self.files = [i.path for i in infos]
        self.sources = {f: relative_source(f, self.input.path) for f in self.files}
        check_bucket(self.output)
        if type(self.input.fs) is type(self.output.fs):
            a, b = self.input.path.rstrip("/") + "/", self.output.path.rstrip("/") + "/"
            if a.startswith(b) or b.startswith(a):
                raise DistillError(f"output {cfg.output!r} and input {cfg.input!r} overlap; use separate locations")
        self.teacher_name = teacher_name(cfg.teacher)
        self.settings = DistillSettings.from_config(cfg, self.teacher_name)
        self.teacher_info = self._check_teacher()
        #: files of uncommitted parts deleted by :meth:`recover` in this run (at the start of a
        #: resume and at the end), reported in the manifest
        self.files_removed = 0

    def _check_teacher(self) -> dict[str, Any]:
        t = self.cfg.teacher
        info: dict[str, Any] = {"name": self.teacher_name, **t.model_dump(mode="json")}
        try:
            if isinstance(t, OpenAIBackendConfig):
                from glidre_core.llm.http import OpenAIHTTPBackend

                with OpenAIHTTPBackend(t) as backend:
                    backend.check()
            elif isinstance(t, TransformersBackendConfig):
                from glidre_core.llm.local import resolve_model_dir

                info["model_dir"] = str(resolve_model_dir(t.model, t.cache_dir))
            elif isinstance(t, RayVLLMBackendConfig):
                from glidre_core.llm.ray_llm import processor_config

                processor_config(t)
            else:
                from glidre_core.model_loading import load_model

                model = load_model(t.model, "cpu", t.tracking_uri)
                if model.span_head is None and t.entity_recognizer == "model":
                    raise DistillError(f"GLiDRE teacher {t.model!r} has no entity (span) head: it cannot find "
                                       "entities in raw text (use entity_recognizer: spacy, or a joint model)")
                info["relation_labels"] = list(self.cfg.relation_types or model.config.labels)
                info["entity_types"] = list(self.cfg.entity_types or model.config.entity_labels)
                del model
        except DistillError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here makes the whole run pointless
            raise DistillError(f"teacher {self.teacher_name!r} is not usable: {type(exc).__name__}: {exc}") from exc
        return info

    # -- the output: refuse / overwrite / resume ------------------------------------------------
    def path(self, *names: str) -> str:
        return posixpath.join(self.output.path, *names)

    def run_settings(self) -> dict[str, Any]:
        """What :data:`RESUME_KEYS` compares, as it reads back from ``_run.json`` (JSON values)."""
        cfg = self.cfg
        settings = {
            "teacher": teacher_settings(cfg.teacher, self.teacher_info), "prompt": self.prompt.key,
            "prompt_fingerprint": self.prompt.fingerprint, "generation": cfg.generation.model_dump(mode="json"),
            "entity_types": cfg.entity_types, "relation_types": cfg.relation_types, "chunk_chars": cfg.chunk_chars,
            "max_text_chars": cfg.max_text_chars, "strict": cfg.strict, "lines_per_block": cfg.lines_per_block,
            "output_version": OUTPUT_VERSION,
        }
        return json.loads(json.dumps(settings, default=str))

    def read_run_state(self) -> dict[str, Any] | None:
        from glidre_core.extraction.storage import read_bytes

        data = read_bytes(self.output.fs, self.path(RUN_STATE_FILE))
        return json.loads(data) if data is not None else None

    def write_run_state(self, settings: dict[str, Any], run_id: str, started: datetime) -> None:
        """``_run.json``, written before any part: what the run was started with (what the next
        ``--resume`` is checked against) and its run id (whether it finished: see open_index)."""
        from glidre_core.extraction.storage import write_bytes

        state = {**settings, "run_id": run_id, "started_at": started.isoformat(), "input": self.cfg.input}
        write_bytes(self.output.fs, self.path(RUN_STATE_FILE),
                    json.dumps(state, indent=2, sort_keys=True).encode("utf-8"))

    def recover(self, index: Any) -> tuple[Any, int]:
        """Bring ``index`` up to date with the ledger and delete the ``documents/`` and
        ``errors/`` files of parts that never committed (a crash between the data files and
        the ledger, a torn ledger): their records are redone. Returns the index and the number
        of files removed."""
        from glidre_core.extraction.state import part_stem, sync_index

        fs = self.output.fs
        index, bad = sync_index(fs, self.path(LEDGER_DIR), index)
        committed = index.part_names
        orphans = list(bad) + [p for d in (DOCUMENTS_DIR, ERRORS_DIR) for p in _list(fs, self.path(d))
                               if part_stem(p) not in committed]
        if orphans:
            logger.warning("removing %d files of parts that were never committed (interrupted run)", len(orphans))
        for p in orphans:
            fs.delete_file(p)
        self.files_removed += len(orphans)
        return index, len(orphans)

    def prepare_output(self, settings: dict[str, Any] | None = None) -> Any:
        """Refuse / overwrite / resume an existing output; returns its committed-units index
        (:class:`~glidre_core.extraction.state.OutputIndex`, empty for a new output)."""
        from glidre_core.extraction.errors import OutputError
        from glidre_core.extraction.state import OutputIndex, check_resume_settings, open_index
        from glidre_core.extraction.storage import delete_tree, is_empty

        cfg = self.cfg
        settings = settings if settings is not None else self.run_settings()
        existing = not is_empty(self.output)
        if existing and cfg.overwrite:
            logger.warning("overwrite: deleting everything under %s", self.output.uri)
            delete_tree(self.output)
            return OutputIndex()
        if existing and not cfg.resume:
            raise DistillError(f"output {cfg.output!r} already exists: pass --resume to continue it or "
                               "--overwrite to replace it")
        if not existing:
            if cfg.resume:
                logger.info("--resume: %s is empty, starting a fresh run", self.output.uri)
            return OutputIndex()
        previous = self.read_run_state()
        if previous is None:
            raise DistillError(f"cannot resume {cfg.output!r}: it has no {RUN_STATE_FILE} (not a distill output, "
                               "or one written before --resume existed); use --overwrite to start again")
        try:
            check_resume_settings(self.output.uri, previous, settings, RESUME_KEYS)
        except OutputError as exc:
            raise DistillError(str(exc)) from None
        return open_index(self.output.fs, self.output.path, previous.get("run_id"), self.recover)


def build_dataset(setup: _Setup, progress: Any = None, resume: Any = None) -> Any:
    """The Ray Data plan up to (not including) the write.

    ``resume`` (a :class:`~glidre_core.extraction.state.ResumePlan`) removes complete input
    files from the read and tells the reader which blocks and lines of the partly done files to
    skip: those records never reach the teacher.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from glidre_core.extraction.source import JsonLinesDatasource, ParquetRecordsDatasource
    from glidre_core.extraction.state import ResumePlan

    cfg = setup.cfg
    resume = resume or ResumePlan()
    kind = JsonLinesDatasource if setup.format == "jsonl" else ParquetRecordsDatasource
    source = kind(resume.files_to_read(setup.files, setup.sources), root=setup.input.path,
                  filesystem=setup.input.fs, lines_per_block=cfg.lines_per_block, skip=resume.skip)
    ds = ray.data.read_datasource(source, num_cpus=cfg.read_num_cpus)
    teacher = cfg.teacher
    if isinstance(teacher, RayVLLMBackendConfig):
        from glidre_core.llm.ray_llm import build_distill_processor, merge_chunk_rows

        settings = setup.settings
        ds = ds.map_batches(lambda b: pa.Table.from_pylist(chunk_batch(b, settings)), batch_format="pyarrow",
                            batch_size=cfg.lines_per_block, num_cpus=cfg.read_num_cpus)
        ds = build_distill_processor(teacher)(ds)
        return ds.groupby("key").map_groups(
            lambda group: _table([merge_chunk_rows(group.to_pylist(), settings)]), batch_format="pyarrow")
    w = cfg.workers
    return ds.map_batches(
        DistillWorker, batch_format="pyarrow", batch_size=cfg.batch_size,
        compute=ActorPoolStrategy(min_size=w.min_size, max_size=w.max_size,
                                  max_tasks_in_flight_per_actor=w.max_tasks_in_flight),
        num_cpus=w.num_cpus, num_gpus=w.num_gpus or None,
        fn_constructor_kwargs={"teacher": teacher, "settings": setup.settings, "share": 1.0 / w.max_size,
                               "progress": progress},
    )


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    """Run the whole job; returns the manifest (also written to ``<output>/_manifest.json``).

    Raises :class:`DistillError` for whole-run failures; per-document failures end up in
    ``errors/`` and in the manifest counts.
    """
    from glidre_core.extraction.manifest import new_run_id, utc_now
    from glidre_core.extraction.progress import InputSize, ProgressLogger, ProgressTracker, StallError
    from glidre_core.extraction.resources import resource_view_text
    from glidre_core.extraction.session import JobInterrupted, ray_session
    from glidre_core.extraction.state import ResumePlan, resume_plan

    started = utc_now()
    run_id = new_run_id(started)
    setup = _Setup(cfg)
    settings = setup.run_settings()
    index = setup.prepare_output(settings)
    setup.write_run_state(settings, run_id, started)
    fs, root = setup.output.fs, setup.output.path
    resume = resume_plan(index, fs, setup.path(LEDGER_DIR)) if index.parts.num_rows else ResumePlan()
    todo = len(setup.files) - len(resume.done_files & set(setup.sources.values()))
    if resume.committed_docs:
        logger.info("resume: %d documents already written (documents/ or errors/); %d of %d input files complete, "
                    "%d partly done", resume.committed_docs, len(setup.files) - todo, len(setup.files),
                    len(resume.skip))
    logger.info("distill %s: %d %s files from %s -> %s (teacher %s, prompt %s)", run_id, len(setup.files),
                setup.format, cfg.input, cfg.output, setup.teacher_name, setup.prompt.key)
    sink = DistillSink(fs, root, run_id, setup.teacher_name, setup.prompt.key)
    snapshot = None
    if todo:
        with ray_session(cfg.ray.address, cfg.ray.num_cpus):
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            tracker = ProgressTracker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)).remote()
            sink.progress = tracker
            ds = build_dataset(setup, tracker, resume)
            watch = ProgressLogger(tracker, cfg.progress_interval_s, cfg.stall_timeout_s,
                                   InputSize(committed_before=resume.committed_docs), resource_view_text,
                                   checkpoint=lambda summaries: index.checkpoint(fs, root, summaries),
                                   checkpoint_interval_s=cfg.index_checkpoint_s)
            try:
                with watch:
                    ds.write_datasink(sink, ray_remote_args={"num_cpus": cfg.read_num_cpus})
            except StallError as exc:
                raise DistillError(f"distill {run_id} stalled: {exc}") from None
            except (KeyboardInterrupt, JobInterrupted):
                logger.warning("distill %s interrupted: committed parts stay; continue with --resume", run_id)
                raise
            snapshot = watch.last
    else:
        logger.info("resume: every input file is already complete; nothing to send to the teacher")
    manifest = finalize(setup, sink, run_id, started, snapshot, index, resume.committed_docs)
    log_summary(manifest)
    return manifest


def finalize(setup: _Setup, sink: DistillSink, run_id: str, started: datetime,
             snapshot: dict[str, Any] | None = None, index: Any = None, committed_before: int = 0) -> dict[str, Any]:
    """Reconcile the whole output with the input and with what is on disk, merge, save the index
    (this run finalized), write ``_manifest.json`` (last).

    Document counts (read, written, errored, by error type, entities, relations) are the whole
    output's: this run's parts from the sink, earlier runs' from the index (:meth:`_Setup.recover`
    adds any committed part neither knows and deletes uncommitted files). What a run *cost* or
    did to the answers (tokens, chunks, requests, drops, repairs, documents without relations,
    throughput) is this run's. The checks: ``docs_read = docs_written + docs_errored``; every
    committed part's files hold the lines its ledger says, and no other part file exists; no
    input record is committed twice (per unit, and by key within this run); every input file
    with records is complete.
    """
    from glidre_core.extraction.manifest import build_manifest, reconciles, throughput, utc_now
    from glidre_core.extraction.state import OutputIndex
    from glidre_core.extraction.storage import write_bytes

    cfg, fs, root = setup.cfg, setup.output.fs, setup.output.path
    index = index if index is not None else OutputIndex()
    stats: Counter = Counter()
    keys = []
    for r in sink.results:
        stats.update(r["stats"])
        keys.append(r["keys"])
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    index.add(r["summary"] for r in sink.results if r.get("summary"))
    index, _ = setup.recover(index)
    sources = set(setup.sources.values())
    cov = index.coverage(sources)
    duplicates = int(all_keys.size - np.unique(all_keys).size) + cov.overcommitted
    totals = index.totals()
    written, errored = totals["extracted"], totals["failed"]
    processed = stats["docs"]
    docs_read = committed_before + processed
    # the lines each committed part's files must hold, from the index (no ledger rows read)
    expected: dict[str, int] = {}
    for part, ok, failed in zip(*(index.parts.column(c).to_pylist() for c in ("part", "extracted", "failed"))):
        if ok:
            expected[posixpath.join(root, DOCUMENTS_DIR, f"{part}.jsonl")] = ok
        if failed:
            expected[posixpath.join(root, ERRORS_DIR, f"{part}.jsonl")] = failed
    doc_parts, err_parts = _list(fs, posixpath.join(root, DOCUMENTS_DIR)), _list(fs, posixpath.join(root, ERRORS_DIR))
    unexpected = sorted(set(doc_parts + err_parts) - set(expected))
    merged = None
    if cfg.merge_output:
        on_disk, size = merge_parts(fs, doc_parts, posixpath.join(root, MERGED_FILE))
        merged = {"path": posixpath.join(cfg.output.rstrip("/"), MERGED_FILE), "documents": sum(on_disk.values()),
                  "bytes": size}
    else:
        on_disk = {p: _lines(fs, p) for p in doc_parts}
    doc_lines = sum(on_disk.values())
    error_types: Counter = Counter()
    for p in err_parts:
        on_disk[p], types = _error_lines(fs, p)
        error_types.update(types)
    err_lines = sum(on_disk[p] for p in err_parts)
    mismatched = sorted(p for p, n in expected.items() if on_disk.get(p, 0) != n)
    reconciled = reconciles(docs_read, {"written": written, "errored": errored}, {
        "documents_on_disk": doc_lines == written, "errors_on_disk": err_lines == errored,
        "no_duplicates": duplicates == 0, "no_unexpected_parts": not unexpected,
        "no_mismatched_parts": not mismatched, "no_incomplete_files": not cov.incomplete})
    index.finalized_runs.append(run_id)
    index.save(fs, root)
    ended = utc_now()
    seconds = (ended - started).total_seconds()
    tokens = {"prompt": stats["prompt_tokens"], "completion": stats["completion_tokens"],
              "total": stats["prompt_tokens"] + stats["completion_tokens"]}
    per_doc = max(1, processed)
    body = {
        "output": cfg.output,
        "output_version": OUTPUT_VERSION,
        "teacher": setup.teacher_info,
        "prompt": setup.prompt.describe(),
        "generation": cfg.generation.model_dump(),
        "docs_read": docs_read,
        "docs_written": written,
        "docs_errored": errored,
        "docs_skipped_resume": committed_before,
        "docs_without_relations": stats["ok_without_relations"],
        "errors_by_type": dict(sorted(error_types.items())),
        "entities_written": totals["entities"],
        "relations_written": totals["triplets"],
        "dropped": {"entities": stats["dropped_entities"], "relations": stats["dropped_relations"],
                    "items": stats["dropped_items"]},
        "repairs": {k.split(":", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith("repair:")},
        "chunks": stats["chunks"],
        "requests_attempted": stats["attempts"],
        "tokens": {**tokens, "prompt_per_doc": tokens["prompt"] / per_doc,
                   "completion_per_doc": tokens["completion"] / per_doc},
        "on_disk": {"documents": doc_lines, "errors": err_lines, "document_parts": len(doc_parts),
                    "error_parts": len(err_parts), "unexpected_parts": unexpected[:20],
                    "mismatched_parts": mismatched[:20]},
        "duplicate_records": duplicates,
        "merged": merged,
        **cov.input_fields(sources),
        "parts": index.parts.num_rows,
        "uncommitted_files_removed": setup.files_removed,
        "this_run": {"docs_written": stats["ok"], "docs_errored": stats["errored"],
                     "parts_written": sum(1 for r in sink.results if r.get("summary"))},
    }
    manifest = build_manifest(
        run_id=run_id, started=started, ended=ended, reconciled=reconciled, input_uri=cfg.input,
        input_format=setup.format, input_files=len(setup.files), body=body,
        throughput=throughput(processed, seconds, snapshot, rates={
            "tokens_per_second": tokens["total"], "completion_tokens_per_second": tokens["completion"]}),
        config=cfg.model_dump(mode="json"))
    if not reconciled:
        logger.error("distill output does not reconcile: %d read, %d written + %d errored in the output, %d + %d "
                     "on disk, %d duplicate records, unexpected parts %s, mismatched parts %s, incomplete input "
                     "files %s", docs_read, written, errored, doc_lines, err_lines, duplicates, unexpected[:5],
                     mismatched[:5], cov.incomplete[:5])
    write_bytes(fs, posixpath.join(root, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode("utf-8"))
    return manifest


def log_summary(manifest: dict[str, Any]) -> None:
    tp = manifest["throughput"]
    logger.info("distill %s %s in %.1fs: %d docs read = %d written + %d errored %s (%d skipped as already done); "
                "%d entities, %d relations; %d tokens (%.2f docs/s, %.1f tokens/s) -> %s", manifest["run_id"],
                manifest["status"], manifest["duration_s"], manifest["docs_read"], manifest["docs_written"],
                manifest["docs_errored"], manifest["errors_by_type"] or "", manifest["docs_skipped_resume"],
                manifest["entities_written"], manifest["relations_written"], manifest["tokens"]["total"],
                tp["docs_per_second"] or 0.0, tp["tokens_per_second"] or 0.0, manifest["output"])


def summary_text(manifest: dict[str, Any]) -> str:
    """A short human-readable summary (printed by the CLI and the job)."""
    t = manifest["tokens"]
    lines = [
        f"run {manifest['run_id']}: {manifest['status']} in {manifest['duration_s']:.1f}s",
        f"teacher         {manifest['teacher']['name']}  (prompt {manifest['prompt']['key']})",
        f"docs read       {manifest['docs_read']}",
        f"docs written    {manifest['docs_written']}  ({manifest['entities_written']} entities, "
        f"{manifest['relations_written']} relations)",
        f"docs errored    {manifest['docs_errored']}  {manifest['errors_by_type'] or ''} (see errors/)",
        f"skipped (resume) {manifest.get('docs_skipped_resume', 0)}",
        f"tokens          {t['total']}  ({t['prompt']} prompt + {t['completion']} completion)",
        f"output          {manifest['output']}" + (f"  (training file: {manifest['merged']['path']})"
                                                   if manifest.get("merged") else ""),
    ]
    return "\n".join(lines)
