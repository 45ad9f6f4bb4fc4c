"""The two Ray Data transforms of the extraction pipeline.

1. :func:`preprocess_batch` (stateless CPU tasks): raw record -> validated, tokenized document,
   or a failure row. Tokenizing here keeps the model actors (possibly on GPUs) busy with forward
   passes only.
2. :class:`Extractor` (actor pool): loads the model and embeds the label set (and, for a model
   with a span head, the entity types) ONCE in ``__init__``, then turns each batch of prepared
   documents into one result row per document (nested triplets and entities), or a failure row.
   Documents given with entities only get relations (``entity_source="given"``); documents
   without entities get entities and relations from the joint path (``Predictor.extract``)
   (``entity_source="predicted"``), or, when the model has no span head, a ``NoEntities`` failure.
   With the verify stage on (``verify.enabled``), the actor also builds the LLM backend once in
   ``__init__``; per batch, the band candidates of every document (from the same forward pass)
   go to the LLM in one ``generate`` call, and the confirmed ones join the triplets
   (:mod:`glidre_core.llm.verify`).

Error flow: nothing raised by a single document escapes either stage. A record that is not
UTF-8 or not JSON, a document that fails validation, has too many entities or too long a text,
and a document whose forward pass or decoding fails, each becomes a row with ``status="failed"``
and ``stage`` / ``error_type`` / ``field`` / ``message`` (the message names the document and the
field), and travels on to the sink, which writes it to ``errors/``. (Records committed by an
earlier run are not read at all on resume.) So every input record leaves the pipeline as exactly
one row, carrying its input unit, which is what makes ``docs_read == docs_extracted +
docs_failed`` and the per-unit completeness checkable at the end.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from glidre_core.documents import Document, DocumentError, parse_document
from glidre_core.extraction.schemas import (
    PREPARED, RESULT, SOURCE_GIVEN, SOURCE_PREDICTED, STATUS_EXTRACTED, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED,
    UNIT_COLUMNS, without_units,
)
from glidre_core.extraction.source import fallback_id
from glidre_core.text import split_words

logger = logging.getLogger(__name__)


# -- stage 1: validate and tokenize ---------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerSpec:
    """What the CPU tasks need to tokenize exactly as the model would, without the model."""

    name: str | None  # the model's document encoder name (None = random test encoder)
    max_length: int
    overlap: int

    @classmethod
    def from_model(cls, model: Any) -> "TokenizerSpec":
        return cls(model.config.encoder, model.encoder.max_length, model.encoder.overlap)


@lru_cache(maxsize=4)
def _tokenizer(name: str | None):
    """Per-process cache: Ray reuses task worker processes, so a tokenizer is loaded once per
    worker rather than once per batch (loading one takes longer than tokenizing a batch)."""
    from glidre_core.pretrained import load_subword_tokenizer

    return load_subword_tokenizer(name)


def prepare_document(doc: Document, spec: TokenizerSpec, tokenizer: Any = None):
    """``GLiDRE.prepare`` for inference, without loading the model (same library function)."""
    from glidre_core.preparation import prepare_document as _prepare

    return _prepare(doc, tokenizer or _tokenizer(spec.name), spec.max_length, spec.overlap)


def encode_prepared(prepared) -> str:
    t = prepared.tokens
    return json.dumps({
        "ids": t.token_ids, "first": t.word_first_token, "end": t.word_token_end,
        "windows": [[w.tok_start, w.tok_end, w.own_start, w.own_end] for w in t.windows],
        "spans": prepared.mention_spans,
        "shapes": None if prepared.word_shapes is None else prepared.word_shapes.tolist(),
    }, separators=(",", ":"))


def decode_prepared(document_json: str, tokens_json: str):
    from glidre_core.modeling.windows import TokenizedDocument, Window
    from glidre_core.preparation import PreparedDocument

    doc = Document.model_validate_json(document_json)
    t = json.loads(tokens_json)
    tokens = TokenizedDocument(t["ids"], t["first"], t["end"], [Window(*w) for w in t["windows"]])
    spans = [[tuple(s) for s in ent] for ent in t["spans"]]
    # The word char offsets are not shipped (they follow from the text with the one splitter):
    # the joint path needs them to turn predicted word spans back into character mentions.
    words = split_words(doc.text) if not doc.entities else None
    shapes = t.get("shapes")
    return PreparedDocument(doc, tokens, spans, [e.id for e in doc.entities], [], words,
                            word_shapes=None if shapes is None else np.asarray(shapes, dtype=np.int64))


def given_entity_row(doc: Document, entity: Any) -> dict[str, Any]:
    """An ``entities`` row for an entity that came with the document (no scores: not predicted)."""
    return {
        "entity_id": entity.id, "text": doc.entity_text(entity), "type": entity.type,
        "mention_count": len(entity.mentions), "entity_source": SOURCE_GIVEN, "score": None,
        "mentions": [{"start": m.start, "end": m.end, "text": doc.text[m.start : m.end], "score": None}
                     for m in entity.mentions],
    }


def _failure(doc_id: str | None, source: str, line: int | None, stage: str, error_type: str,
             field: str | None, message: str, **extra: Any) -> dict[str, Any]:
    return {"doc_id": doc_id, "source": source, "line": line, "status": STATUS_FAILED, "stage": stage,
            "error_type": error_type, "field": field, "message": message, **extra}


def preprocess_record(
    source: str, line: int | None, raw: bytes, spec: TokenizerSpec, *,
    max_entities: int, max_text_chars: int, tokenizer: Any = None,
) -> dict[str, Any]:
    """One raw record -> one :data:`PREPARED` row (ok or failed). Never raises.

    (Resume needs no skipping here: the reader never emits committed records, see
    :mod:`glidre_core.extraction.state`.)
    """
    fid = fallback_id(source, line, raw)
    where = f"{source}:{line}" if line is not None else source
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _failure(fid, source, line, "read", "invalid_encoding", "<line>",
                        f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return _failure(fid, source, line, "read", "invalid_json", "<line>",
                        f"{where}: not valid JSON: {exc.msg} (column {exc.colno})")
    doc_id = fid
    try:
        if not isinstance(obj, dict):
            raise DocumentError(fid, "<root>", f"expected a JSON object, got {type(obj).__name__}")
        if obj.get("doc_id") is not None:
            doc_id = str(obj["doc_id"])
        if isinstance(obj.get("entities"), str):  # Parquet tables may store entities as JSON text
            try:
                obj["entities"] = json.loads(obj["entities"])
            except json.JSONDecodeError as exc:
                raise DocumentError(doc_id, "entities", f"not valid JSON: {exc.msg}") from None
        text_value = obj.get("text")
        if isinstance(text_value, str) and len(text_value) > max_text_chars:
            return _failure(doc_id, source, line, "validate", "text_too_long", "text",
                            f"document {doc_id!r}: field 'text': {len(text_value)} characters exceed "
                            f"max_text_chars={max_text_chars}")
        ents = obj.get("entities")
        if isinstance(ents, list) and len(ents) > max_entities:
            return _failure(doc_id, source, line, "validate", "too_many_entities", "entities",
                            f"document {doc_id!r}: field 'entities': {len(ents)} entities exceed "
                            f"max_entities={max_entities}")
        doc = parse_document(obj, fid)
        doc_id = doc.doc_id
    except DocumentError as exc:
        return _failure(exc.doc_id or doc_id, source, line, "validate", "invalid_document", exc.field, str(exc))
    except Exception as exc:  # noqa: BLE001 - one document must never fail the block
        return _failure(doc_id, source, line, "validate", type(exc).__name__, None,
                        f"document {doc_id!r}: {exc}")
    try:
        prepared = prepare_document(doc, spec, tokenizer)
    except DocumentError as exc:
        return _failure(doc_id, source, line, "tokenize", "invalid_document", exc.field, str(exc))
    except Exception as exc:  # noqa: BLE001
        return _failure(doc_id, source, line, "tokenize", type(exc).__name__, None, f"document {doc_id!r}: {exc}")
    return {
        "doc_id": doc_id, "source": source, "line": line, "status": STATUS_OK,
        "num_entities": len(doc.entities),
        "document": doc.model_dump_json(exclude={"relations"}),
        "tokens": encode_prepared(prepared),
    }


def preprocess_batch(
    batch: pa.Table, *, spec: TokenizerSpec, max_entities: int, max_text_chars: int,
    progress: Any = None,
) -> pa.Table:
    """Ray Data ``map_batches`` function: :data:`RECORD` batch -> :data:`PREPARED` batch.

    ``progress`` (a :class:`~glidre_core.extraction.progress.ProgressTracker` handle) gets the
    records and bytes read, from which the ETA of a JSON Lines input is estimated.
    """
    if progress is not None:
        try:  # +1 per record: the newline the reader stripped
            nbytes = pa.compute.sum(pa.compute.binary_length(batch.column("raw"))).as_py() or 0
            progress.add_read.remote(batch.num_rows, nbytes + batch.num_rows)
        except Exception:  # noqa: BLE001 - progress is best effort, never fatal
            logger.debug("progress report failed", exc_info=True)
    rows = [
        preprocess_record(s, ln, r, spec, max_entities=max_entities, max_text_chars=max_text_chars)
        for s, ln, r in zip(batch.column("source").to_pylist(), batch.column("line").to_pylist(),
                            batch.column("raw").to_pylist())
    ]
    return with_units(pa.Table.from_pylist(rows, schema=without_units(PREPARED)), batch, PREPARED)


def with_units(table: pa.Table, source: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (one row per row of ``source``, in order) with ``source``'s unit columns."""
    for name in UNIT_COLUMNS:
        column = source.column(name) if name in source.column_names else pa.nulls(table.num_rows, schema.field(name).type)
        table = table.append_column(schema.field(name), column)
    return table.select(schema.names)


# -- stage 2: the model -------------------------------------------------------------------------
def load_model_ref(ref: str, tracking_uri: str | None = None, device: str = "cpu"):
    """``glidre_core.model_loading.load_model``, passing ``tracking_uri`` where it is accepted."""
    import inspect

    from glidre_core.model_loading import load_model

    params = inspect.signature(load_model).parameters
    kwargs: dict[str, Any] = {}
    if "device" in params:
        kwargs["device"] = device
    if tracking_uri is not None:
        if "tracking_uri" in params:
            kwargs["tracking_uri"] = tracking_uri
        else:
            logger.warning("this glidre_core.model_loading.load_model takes no tracking_uri; ignoring %s", tracking_uri)
    model = load_model(ref, **kwargs)
    return model.to(device) if "device" not in params else model


#: Messages of the ``NoEntities`` failure rows: why a document without entities cannot be extracted.
NO_ENTITY_HEAD = "document has no entities and the model has no entity head; give entities or use a model with span_head"
NO_ENTITY_TYPES = ("document has no entities and no entity types are set (the model stores none); "
                   "give entities or set entity_labels")


def _per_document(run: Any, prepared: list) -> list[Any]:
    """``run`` over the batch; if the batch fails, over each document alone, so one bad document
    becomes its own exception (a failure row) instead of failing its neighbours."""
    import torch

    with torch.inference_mode():
        try:
            return list(run(prepared))
        except Exception as exc:  # noqa: BLE001 - isolate the failing document(s)
            if len(prepared) == 1:
                return [exc]
        out: list[Any] = []
        for p in prepared:
            try:
                out.append(run([p])[0])
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out


class Extractor:
    """Ray Data actor: the model, the label embeddings and (span head models) the entity-type
    embeddings and thresholds are computed once, in ``__init__``.

    ``__call__`` takes a :data:`PREPARED` batch and returns a :data:`RESULT` batch with exactly one
    row per input row. Documents with at least one given entity are scored for relations only;
    documents without entities take the joint path (entities, then relations, one encoder pass).
    Each group is run in one call; if that fails (a pathological document, out of GPU memory,
    ...) each document is retried alone, so only the documents that fail on their own become
    failure rows.
    """

    def __init__(
        self, *, model_ref: str, labels: list[str], threshold: float | dict[str, float] | None,
        top_k: int | None = None, tracking_uri: str | None = None, device: str = "cpu",
        torch_threads: int | None = None, progress: Any = None,
        entity_labels: list[str] | None = None, entity_threshold: float | dict[str, float] | None = None,
        coreference: str | None = None, batch_size: int = 64, entity_recognizer: str = "model",
        verify: Any = None, verify_share: float = 1.0,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("num_gpus > 0 was requested but this actor sees no CUDA device")
        t0 = time.perf_counter()
        self.model = load_model_ref(model_ref, tracking_uri, device)
        self.model.eval()
        self.predictor = self.model.predictor(
            relation_labels=labels, entity_labels=entity_labels or None, threshold=threshold, top_k=top_k,
            entity_threshold=entity_threshold, coreference=coreference, batch_size=max(1, batch_size),
            entity_recognizer=entity_recognizer,
            candidate_band=(verify.margin_below, verify.margin_above) if verify is not None and verify.enabled else None,
        )
        _ = self.predictor.relations  # embed the label set now, not on the first batch
        self.verifier = None
        if verify is not None and verify.enabled:  # the LLM backend, once per actor (a model, or a client)
            from glidre_core.llm.verify import build_verifier

            self.verifier = build_verifier(verify, verify_share)
        self.progress = progress
        self.actor_id = f"{id(self):x}"
        self.no_entities_reason = self._entity_path(entity_labels)
        raw_path = ("no entity path" if self.no_entities_reason else f"entities by {self.predictor.entity_recognizer}")
        logger.info("extractor ready in %.1fs (model %s, %d labels, %s, device %s, %d threads%s)",
                    time.perf_counter() - t0, model_ref, len(labels), raw_path, device, torch.get_num_threads(),
                    f", verify by {self.verifier.backend.name}" if self.verifier else "")

    def _entity_path(self, entity_labels: list[str] | None) -> str | None:
        """Load what documents without entities need now (spaCy, or the entity-type embeddings),
        or return the reason why such documents cannot be extracted."""
        if self.predictor.entity_recognizer == "spacy":
            if not (entity_labels or self.model.config.entity_labels):
                return NO_ENTITY_TYPES
            _ = self.predictor.recognizer
            return None
        if self.model.span_head is None:
            return NO_ENTITY_HEAD
        if not (entity_labels or self.model.config.entity_labels):
            return NO_ENTITY_TYPES
        _ = self.predictor.entity_types
        return None

    def _score(self, prepared: list) -> list[Any]:
        """Triplet rows per document (with verify: a ``BandDecoded``, rows and band candidates),
        or the exception that document raised when run alone."""
        if self.verifier is not None:
            return _per_document(self.predictor.predict_with_candidates, prepared)
        return _per_document(self.predictor.predict, prepared)

    def _extract_raw(self, prepared: list) -> list[Any]:
        """Joint-path results per document without entities (with verify: a ``BandDecoded``),
        or the exception it raised alone."""
        if self.verifier is not None:
            return _per_document(self.predictor.extract_with_candidates, prepared)
        return _per_document(self.predictor.extract, prepared)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[dict[str, Any] | None] = [None] * len(rows)
        todo: list[tuple[int, Any]] = []
        for i, r in enumerate(rows):
            base = {k: r.get(k) for k in ("doc_id", "source", "line", "status", "stage", "error_type",
                                           "field", "message", "num_entities")}
            if r["status"] != STATUS_OK:
                out[i] = base
                continue
            try:
                todo.append((i, decode_prepared(r["document"], r["tokens"])))
            except Exception as exc:  # noqa: BLE001
                out[i] = _failure(r["doc_id"], r["source"], r["line"], "extract", type(exc).__name__, None,
                                  f"document {r['doc_id']!r}: cannot rebuild the prepared document: {exc}")
        given = [(i, p) for i, p in todo if p.doc.entities]
        raw = [(i, p) for i, p in todo if not p.doc.entities]
        pending: list[tuple[int, Document, Any]] = []  # (row, document, BandDecoded) for the verifier
        if given:
            scores = self._score([p for _, p in given])
            for (i, p), sc in zip(given, scores):
                decoded = sc if isinstance(sc, Exception) or self.verifier is None else sc.rows
                out[i] = self._result(rows[i], p, decoded)
                if self.verifier is not None and out[i]["status"] == STATUS_EXTRACTED:
                    pending.append((i, p.doc, sc))
        if raw and self.no_entities_reason is not None:
            for i, p in raw:
                out[i] = self._no_entities(rows[i], p.doc.doc_id)
        elif raw:
            results = self._extract_raw([p for _, p in raw])
            for (i, p), res in zip(raw, results):
                out[i] = self._raw_result(rows[i], p.doc.doc_id,
                                          res.result if self.verifier is not None and not isinstance(res, Exception)
                                          else res)
                if self.verifier is not None and out[i]["status"] == STATUS_EXTRACTED:
                    pending.append((i, res.result.document, res))
        if pending:
            self._verify(rows, out, pending)
        self._report(out)
        return with_units(pa.Table.from_pylist(out, schema=without_units(RESULT)), batch, RESULT)

    def _verify(self, rows: list[dict[str, Any]], out: list[dict[str, Any] | None],
                pending: list[tuple[int, Document, Any]]) -> None:
        """The verify stage over the batch's extracted documents: one ``generate`` call; each
        document's triplets become the verified ones and its accounting goes into ``verify``."""
        try:
            verified = self.verifier.verify([(doc, decoded) for _, doc, decoded in pending])
        except Exception as exc:  # noqa: BLE001 - a bug in the stage fails these documents, not the job
            logger.warning("verify stage failed for %d document(s): %s", len(pending), exc, exc_info=True)
            for i, doc, _ in pending:
                out[i] = _failure(doc.doc_id, rows[i]["source"], rows[i]["line"], "verify", type(exc).__name__, None,
                                  f"document {doc.doc_id!r}: verify stage failed: {exc}",
                                  num_entities=out[i]["num_entities"])
            return
        for (i, _, _), (triplets, stats) in zip(pending, verified):
            out[i]["triplets"] = triplets
            out[i]["num_triplets"] = len(triplets)
            out[i]["verify"] = stats.as_dict()

    def _no_entities(self, row: dict[str, Any], doc_id: str) -> dict[str, Any]:
        return _failure(doc_id, row["source"], row["line"], "extract", "NoEntities", "entities",
                        f"document {doc_id!r}: field 'entities': {self.no_entities_reason}", num_entities=0)

    def _raw_result(self, row: dict[str, Any], doc_id: str, result: Any) -> dict[str, Any]:
        """A result row from the joint path: predicted entities (with scores and char-offset
        mentions) and the relations between them."""
        if isinstance(result, Exception):
            return _failure(doc_id, row["source"], row["line"], "extract", type(result).__name__, None,
                            f"document {doc_id!r}: entity and relation extraction failed: {result}", num_entities=0)
        entities = [
            {"entity_id": e["id"], "text": e["text"], "type": e["type"], "mention_count": len(e["mentions"]),
             "entity_source": SOURCE_PREDICTED, "score": e["score"], "mentions": e["mentions"]}
            for e in result.entities
        ]
        return {
            "doc_id": doc_id, "source": row["source"], "line": row["line"], "status": STATUS_EXTRACTED,
            "entity_source": SOURCE_PREDICTED, "num_entities": len(entities),
            "num_triplets": len(result.relations), "triplets": result.relations, "entities": entities,
        }

    def _result(self, row: dict[str, Any], prepared: Any, triplets: Any) -> dict[str, Any]:
        doc = prepared.doc
        if isinstance(triplets, Exception):
            return _failure(doc.doc_id, row["source"], row["line"], "extract", type(triplets).__name__, None,
                            f"document {doc.doc_id!r}: model forward failed: {triplets}",
                            num_entities=len(doc.entities))
        try:
            entities = [given_entity_row(doc, e) for e in doc.entities]
        except Exception as exc:  # noqa: BLE001
            return _failure(doc.doc_id, row["source"], row["line"], "extract", type(exc).__name__, None,
                            f"document {doc.doc_id!r}: decoding failed: {exc}", num_entities=len(doc.entities))
        return {
            "doc_id": doc.doc_id, "source": row["source"], "line": row["line"], "status": STATUS_EXTRACTED,
            "entity_source": SOURCE_GIVEN, "num_entities": len(doc.entities), "num_triplets": len(triplets),
            "triplets": triplets, "entities": entities,
        }

    def _report(self, out: list[dict[str, Any] | None]) -> None:
        if self.progress is None:
            return
        counts = {STATUS_EXTRACTED: 0, STATUS_FAILED: 0, STATUS_SKIPPED: 0, "triplets": 0}
        for r in out:
            counts[r["status"]] += 1
            counts["triplets"] += r.get("num_triplets") or 0
        try:
            self.progress.add.remote(self.actor_id, counts)
        except Exception:  # noqa: BLE001 - progress is best effort, never fatal
            logger.debug("progress report failed", exc_info=True)
