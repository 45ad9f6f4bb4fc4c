"""Arrow schemas of every table the extraction pipeline passes between stages or writes.

Explicit schemas (rather than inferring from Python rows) keep column types stable when a batch
happens to hold only failures, only ``None`` types, or no triplets at all, so that the Parquet
parts of one output always concatenate.

Flow: ``RECORD`` (read) -> ``PREPARED`` (validate + tokenize, CPU tasks) -> ``RESULT`` (model
actors; one row per document with nested triplets/entities) -> the sink explodes ``RESULT`` into
``TRIPLETS``, ``ENTITIES``, ``ERRORS`` and the per-document ledger ``DOCUMENTS``.

Schema version 2 added where entities come from: documents given with entities keep them
(``entity_source="given"``), documents without entities get them from the model's span head
(``"predicted"``, with a score per entity and per mention). Readers of version-1 outputs see
these columns as nulls (Parquet readers fill missing columns from the schema).

Schema version 3 added the input *unit* of every document: ``block``, the index of its read block
within its source file (``lines_per_block`` records each). Resume and the output index count
committed documents per unit (see :mod:`glidre_core.extraction.state`).

Schema version 4 added the verify stage (:mod:`glidre_core.llm.verify`, off by default):
``triplets`` has a ``verification`` column, null when the stage is off, else how the triplet got
through it (``above_band`` | ``confirmed`` | ``not_sent`` | ``unusable``; rejected candidates are
not written); ``score`` is always GLiDRE's. The actor's ``RESULT`` rows carry the per-document
accounting (``verify``, summed into ``_manifest.json``; not written as a table).
"""

from __future__ import annotations

import pyarrow as pa

#: Recorded in ``_manifest.json``; bump when a written table changes shape.
OUTPUT_SCHEMA_VERSION = 4

#: Values of ``entity_source`` (entities table, ledger and result rows).
SOURCE_GIVEN = "given"  # entities came with the document; only relations were predicted
SOURCE_PREDICTED = "predicted"  # the span head found the entities in raw text

#: One input record: where it came from and its raw bytes (a JSON object, hopefully).
#: Where a record sits in the input: its read block (the unit of resume) within the source file.
UNIT_FIELDS = [
    ("block", pa.int64()),  # 0-based index of the read block within the file
    ("block_size", pa.int32()),  # records in that block (all of them, also ones skipped on resume)
    ("block_last", pa.bool_()),  # the file's last block
]
UNIT_COLUMNS = tuple(name for name, _ in UNIT_FIELDS)

RECORD = pa.schema([
    ("source", pa.string()),  # file path relative to the input root
    ("line", pa.int64()),  # 1-based line (JSONL), element index (JSON array), 0-based row (Parquet)
    ("raw", pa.binary()),
    *UNIT_FIELDS,
])

_STATUS_FIELDS = [
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("line", pa.int64()),
    ("status", pa.string()),  # see STATUS_* below
    ("stage", pa.string()),
    ("error_type", pa.string()),
    ("field", pa.string()),
    ("message", pa.string()),
    ("num_entities", pa.int32()),
    *UNIT_FIELDS,
]

STATUS_OK = "ok"  # validated and tokenized, waiting for the model
STATUS_SKIPPED = "skipped"  # already in the output (resume)
STATUS_FAILED = "failed"
STATUS_EXTRACTED = "extracted"

PREPARED = pa.schema(_STATUS_FIELDS + [
    ("document", pa.string()),  # validated Document as JSON
    ("tokens", pa.string()),  # tokenization + mention word spans as JSON
])

TRIPLET_STRUCT = pa.struct([
    ("head_id", pa.string()), ("head_text", pa.string()), ("head_type", pa.string()),
    ("relation", pa.string()),
    ("tail_id", pa.string()), ("tail_text", pa.string()), ("tail_type", pa.string()),
    ("score", pa.float64()),
    # how the triplet got through the verify stage; null when the stage is off (schema 4)
    ("verification", pa.string()),
])
MENTION_STRUCT = pa.struct([
    ("start", pa.int64()), ("end", pa.int64()),  # character offsets: text[start:end] == text
    ("text", pa.string()),
    ("score", pa.float64()),  # null for given mentions
])
ENTITY_STRUCT = pa.struct([
    ("entity_id", pa.string()), ("text", pa.string()), ("type", pa.string()), ("mention_count", pa.int32()),
    ("entity_source", pa.string()),  # SOURCE_GIVEN | SOURCE_PREDICTED
    ("score", pa.float64()),  # best mention score of a predicted entity; null for given ones
    ("mentions", pa.list_(MENTION_STRUCT)),
])

#: Per-document accounting of the verify stage (fields of :class:`glidre_core.llm.verify.VerifyStats`);
#: null when the stage is off or the document failed.
VERIFY_STRUCT = pa.struct([
    *[(name, pa.int64()) for name in (
        "pairs_scored", "triples_scored", "above_band", "in_band", "sent", "pairs_sent", "not_sent", "not_sent_kept",
        "confirmed",
        "rejected", "unusable", "unusable_kept", "added", "removed", "prompt_tokens", "completion_tokens")],
    ("llm_seconds", pa.float64()),
])

RESULT = pa.schema(_STATUS_FIELDS + [
    ("entity_source", pa.string()),  # how the document's entities were obtained; null if it failed
    ("num_triplets", pa.int32()),
    ("triplets", pa.list_(TRIPLET_STRUCT)),
    ("entities", pa.list_(ENTITY_STRUCT)),
    ("verify", VERIFY_STRUCT),
])

TRIPLETS = pa.schema([
    ("doc_id", pa.string()),
    *[(f.name, f.type) for f in TRIPLET_STRUCT],
    ("model", pa.string()),
    ("run_id", pa.string()),
])
ENTITIES = pa.schema([
    ("doc_id", pa.string()),
    *[(f.name, f.type) for f in ENTITY_STRUCT],
    ("run_id", pa.string()),
])
ERRORS = pa.schema([
    ("doc_id", pa.string()),
    ("stage", pa.string()),  # read | validate | tokenize | extract | verify
    ("error_type", pa.string()),
    ("field", pa.string()),
    ("message", pa.string()),
    ("source", pa.string()),
    ("line", pa.int64()),
    ("run_id", pa.string()),
])
#: The ledger: one row per input document that reached the output, written last per part.
DOCUMENTS = pa.schema([
    ("doc_id", pa.string()),
    ("status", pa.string()),  # extracted | failed
    ("num_entities", pa.int32()),
    ("num_triplets", pa.int32()),
    ("source", pa.string()),
    ("line", pa.int64()),
    ("run_id", pa.string()),
    ("entity_source", pa.string()),  # given | predicted for extracted documents, else null
    ("block", pa.int64()),  # the input unit (source, block); see UNIT_FIELDS
])


def without_units(schema: pa.Schema) -> pa.Schema:
    """``schema`` minus :data:`UNIT_FIELDS` (rows built per document get them added per batch)."""
    return pa.schema([f for f in schema if f.name not in UNIT_COLUMNS])
