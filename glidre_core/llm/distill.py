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
* ``_manifest.json`` (written last): ``docs_read = docs_written + docs_errored``, checked against
  the lines on disk, plus teacher, prompt, token totals and throughput.

Plan (Ray Data, streaming), for the in-process, HTTP and GLiDRE teachers::

    read (the extract job's JSON Lines / Parquet record reader: one bad line is one error row)
      -> map_batches(DistillWorker, ActorPoolStrategy)   each actor builds its teacher once;
                                                          a batch's prompts go to the backend together
      -> write_datasink(DistillSink)                      JSON Lines parts

and for ``ray_vllm`` (see :mod:`glidre_core.llm.ray_llm`): read -> chunk rows -> Ray's vLLM
processor -> ``groupby(key)`` -> merge -> the same sink. Every input record yields exactly one
result row, ok or error: per-record failures are caught where they happen, never allowed to
fail a batch.

What is checked on the driver before Ray starts: the input has files, the output is new (or
``overwrite``), the prompt exists, and the teacher works: an HTTP endpoint answers ``/models``,
an in-process model resolves (a GGUF is converted and cached here, once, so the actors only
load the cache), a GLiDRE model loads with its label sets.
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
from datetime import datetime, timezone
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
MERGED_FILE, MANIFEST_FILE = "distilled.jsonl", "_manifest.json"
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


# -- result rows ---------------------------------------------------------------------------------
def _row(doc: DocInput, status: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in RESULT.names}
    row.update({"key": doc.key, "doc_id": doc.doc_id, "source": doc.source, "line": doc.line, "status": status,
                "raw_answers": [], "repairs": [], "chunks": len(doc.spans), "entities": 0, "relations": 0,
                "dropped_entities": 0, "dropped_relations": 0, "dropped_items": 0, "prompt_tokens": 0,
                "completion_tokens": 0, "attempts": 0, "latency_s": 0.0})
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
    """RECORD rows (source, line, raw) -> documents or InputError rows."""
    out: list[DocInput | dict[str, Any]] = []
    for source, line, raw in zip(batch.column("source").to_pylist(), batch.column("line").to_pylist(),
                                 batch.column("raw").to_pylist()):
        try:
            out.append(parse_input(source, line, raw, settings))
        except Exception as exc:  # noqa: BLE001 - never lose a record
            doc = DocInput(f"{source}:{line}", f"{source}:{line}", "", source, line)
            out.append(input_error_row(doc, "<root>", f"{type(exc).__name__}: {exc}"))
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
                            "text": item.text, "spans": item.spans, "input_error": "", "input_field": ""})
        else:
            records.append({"key": item["key"], "doc_id": item["doc_id"], "source": item["source"],
                            "line": item["line"], "text": "", "spans": [], "input_error": item["message"],
                            "input_field": item["field"]})
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


class DistillSink(Datasink):
    """Writes each write task's rows as one ``documents/`` and one ``errors/`` JSON Lines part.
    Part names are derived from the run, the task and the rows, so a retried task overwrites
    its own parts instead of adding new ones."""

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

        for d in (DOCUMENTS_DIR, ERRORS_DIR):
            ensure_dir(self.fs, posixpath.join(self.root, d))

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        from ray.data.block import BlockAccessor

        from glidre_core.extraction.storage import write_bytes

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        rows = [r for t in tables if t.num_rows for r in t.to_pylist()]
        keys = [r["key"] for r in rows]
        digest = hashlib.sha1("\x00".join(keys).encode("utf-8")).hexdigest()[:12]
        part = f"{self.run_id}-{getattr(ctx, 'task_idx', 0):05d}-{digest}.jsonl"
        docs = [r["document"] for r in rows if r["status"] == OK]
        errs = [json.dumps(error_record(r, self.teacher, self.prompt_key), ensure_ascii=False)
                for r in rows if r["status"] != OK]
        files = {}
        for name, lines in ((DOCUMENTS_DIR, docs), (ERRORS_DIR, errs)):
            if lines:
                path = posixpath.join(self.root, name, part)
                write_bytes(self.fs, path, ("\n".join(lines) + "\n").encode("utf-8"))
                files[path] = len(lines)
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
        if self.progress is not None:
            try:
                self.progress.add_committed.remote(len(rows))
            except Exception:  # noqa: BLE001
                logger.debug("progress report failed", exc_info=True)
        return {"stats": dict(stats), "files": files,
                "keys": np.fromiter((_key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))}

    def on_write_complete(self, write_result: Any) -> None:
        self.results.extend(r for r in write_result.write_returns if r)


# -- the job -------------------------------------------------------------------------------------
def _now() -> datetime:
    return datetime.now(timezone.utc)


def _lines(fs: pafs.FileSystem, path: str) -> int:
    with fs.open_input_stream(path) as f:
        n = 0
        while chunk := f.read(8 << 20):
            n += chunk.count(b"\n")
    return n


def _list(fs: pafs.FileSystem, directory: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".jsonl"))


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

    def prepare_output(self) -> None:
        from glidre_core.extraction.storage import delete_tree, is_empty

        if not is_empty(self.output):
            if not self.cfg.overwrite:
                raise DistillError(f"output {self.cfg.output!r} already exists: pass --overwrite to replace it")
            logger.warning("overwrite: deleting everything under %s", self.output.uri)
            delete_tree(self.output)


def build_dataset(setup: _Setup, progress: Any = None) -> Any:
    """The Ray Data plan up to (not including) the write."""
    import ray
    from ray.data import ActorPoolStrategy

    from glidre_core.extraction.source import JsonLinesDatasource, ParquetRecordsDatasource

    cfg = setup.cfg
    kind = JsonLinesDatasource if setup.format == "jsonl" else ParquetRecordsDatasource
    source = kind(setup.files, root=setup.input.path, filesystem=setup.input.fs, lines_per_block=cfg.lines_per_block)
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
    from glidre_core.extraction.progress import InputSize, ProgressLogger, ProgressTracker, StallError
    from glidre_core.extraction.resources import resource_view_text
    from glidre_core.extraction.session import ray_session

    started = _now()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    setup = _Setup(cfg)
    setup.prepare_output()
    logger.info("distill %s: %d %s files from %s -> %s (teacher %s, prompt %s)", run_id, len(setup.files),
                setup.format, cfg.input, cfg.output, setup.teacher_name, setup.prompt.key)
    sink = DistillSink(setup.output.fs, setup.output.path, run_id, setup.teacher_name, setup.prompt.key)
    snapshot = None
    with ray_session(cfg.ray.address, cfg.ray.num_cpus):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        tracker = ProgressTracker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)).remote()
        sink.progress = tracker
        ds = build_dataset(setup, tracker)
        watch = ProgressLogger(tracker, cfg.progress_interval_s, cfg.stall_timeout_s, InputSize(), resource_view_text)
        try:
            with watch:
                ds.write_datasink(sink, ray_remote_args={"num_cpus": cfg.read_num_cpus})
        except StallError as exc:
            raise DistillError(f"distill {run_id} stalled: {exc}") from None
        snapshot = watch.last
    manifest = finalize(setup, sink, run_id, started, snapshot)
    log_summary(manifest)
    return manifest


def finalize(setup: _Setup, sink: DistillSink, run_id: str, started: datetime,
             snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reconcile what the sink reported with what is on disk, merge, write ``_manifest.json``."""
    from glidre_core.extraction.storage import write_bytes

    cfg, fs, root = setup.cfg, setup.output.fs, setup.output.path
    stats: Counter = Counter()
    reported: dict[str, int] = {}
    keys = []
    for r in sink.results:
        stats.update(r["stats"])
        reported.update(r["files"])
        keys.append(r["keys"])
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    duplicates = int(all_keys.size - np.unique(all_keys).size)
    doc_parts, err_parts = _list(fs, posixpath.join(root, DOCUMENTS_DIR)), _list(fs, posixpath.join(root, ERRORS_DIR))
    unexpected = sorted(set(doc_parts + err_parts) - set(reported))
    merged = None
    if cfg.merge_output:
        on_disk, size = merge_parts(fs, doc_parts, posixpath.join(root, MERGED_FILE))
        merged = {"path": posixpath.join(cfg.output.rstrip("/"), MERGED_FILE), "documents": sum(on_disk.values()),
                  "bytes": size}
    else:
        on_disk = {p: _lines(fs, p) for p in doc_parts}
    doc_lines = sum(on_disk.values())
    err_counts = {p: _lines(fs, p) for p in err_parts}
    err_lines = sum(err_counts.values())
    on_disk.update(err_counts)
    docs_read, written, errored = stats["docs"], stats["ok"], stats["errored"]
    mismatched = [p for p, n in reported.items() if p in on_disk and on_disk[p] != n]
    reconciled = (docs_read == written + errored and doc_lines == written and err_lines == errored
                  and duplicates == 0 and not unexpected and not mismatched)
    ended = _now()
    seconds = (ended - started).total_seconds()
    tokens = {"prompt": stats["prompt_tokens"], "completion": stats["completion_tokens"],
              "total": stats["prompt_tokens"] + stats["completion_tokens"]}
    processed = max(1, written + errored)
    manifest = {
        "status": "complete" if reconciled else "incomplete",
        "reconciled": reconciled,
        "run_id": run_id,
        "started_at": started.isoformat(),
        "ended_at": ended.isoformat(),
        "duration_s": round(seconds, 3),
        "input": cfg.input,
        "input_format": setup.format,
        "input_files": len(setup.files),
        "output": cfg.output,
        "output_version": OUTPUT_VERSION,
        "teacher": setup.teacher_info,
        "prompt": setup.prompt.describe(),
        "generation": cfg.generation.model_dump(),
        "docs_read": docs_read,
        "docs_written": written,
        "docs_errored": errored,
        "docs_without_relations": stats["ok_without_relations"],
        "errors_by_type": {k.split(":", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith("error:")},
        "entities_written": stats["entities"],
        "relations_written": stats["relations"],
        "dropped": {"entities": stats["dropped_entities"], "relations": stats["dropped_relations"],
                    "items": stats["dropped_items"]},
        "repairs": {k.split(":", 1)[1]: v for k, v in sorted(stats.items()) if k.startswith("repair:")},
        "chunks": stats["chunks"],
        "requests_attempted": stats["attempts"],
        "tokens": {**tokens, "prompt_per_doc": tokens["prompt"] / processed,
                   "completion_per_doc": tokens["completion"] / processed},
        "on_disk": {"documents": doc_lines, "errors": err_lines, "document_parts": len(doc_parts),
                    "error_parts": len(err_parts), "unexpected_parts": unexpected[:20],
                    "mismatched_parts": mismatched[:20]},
        "duplicate_records": duplicates,
        "merged": merged,
        "throughput": {
            "docs_per_second": docs_read / seconds if seconds > 0 else None,
            "tokens_per_second": tokens["total"] / seconds if seconds > 0 else None,
            "completion_tokens_per_second": tokens["completion"] / seconds if seconds > 0 else None,
            "steady_docs_per_second": (snapshot or {}).get("steady_docs_per_second"),
        },
        "config": cfg.model_dump(mode="json"),
    }
    if not reconciled:
        logger.error("distill output does not reconcile: %d read, %d written + %d errored reported, %d + %d on disk, "
                     "%d duplicate records, unexpected parts %s", docs_read, written, errored, doc_lines, err_lines,
                     duplicates, unexpected[:5])
    write_bytes(fs, posixpath.join(root, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str).encode("utf-8"))
    return manifest


def log_summary(manifest: dict[str, Any]) -> None:
    tp = manifest["throughput"]
    logger.info("distill %s %s in %.1fs: %d docs read = %d written + %d errored %s; %d entities, %d relations; "
                "%d tokens (%.2f docs/s, %.1f tokens/s) -> %s", manifest["run_id"], manifest["status"],
                manifest["duration_s"], manifest["docs_read"], manifest["docs_written"], manifest["docs_errored"],
                manifest["errors_by_type"] or "", manifest["entities_written"], manifest["relations_written"],
                manifest["tokens"]["total"], tp["docs_per_second"] or 0.0, tp["tokens_per_second"] or 0.0,
                manifest["output"])


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
        f"tokens          {t['total']}  ({t['prompt']} prompt + {t['completion']} completion)",
        f"output          {manifest['output']}" + (f"  (training file: {manifest['merged']['path']})"
                                                   if manifest.get("merged") else ""),
    ]
    return "\n".join(lines)
