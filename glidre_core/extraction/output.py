"""The output layout, the Parquet sink, and the commit protocol that makes ``--resume`` exact.

Layout under the output prefix::

    triplets/<part>.parquet    doc_id, head_id, head_text, head_type, relation, tail_id, tail_text,
                               tail_type, score, verification (null unless the verify stage is on),
                               model, run_id
    entities/<part>.parquet    doc_id, entity_id, text, type, mention_count, entity_source
                               (given | predicted), score (null if given), mentions
                               (list of start, end, text, score: character offsets), run_id
    errors/<part>.parquet      doc_id, stage, error_type, field, message, source, line, run_id
    documents/<part>.parquet   the ledger: one row per input document (extracted or failed), with
                               its entity_source
    _run.json                  what the run was started with (written first)
    _state/                    the committed-units index (index.json + two small Arrow tables)
    _manifest.json             counts, model, labels, config, times (written LAST)

Commit protocol (why resume never duplicates a triplet):

* Each write task writes one *part*: its triplets, entities and errors files, and then, last,
  its ledger file ``documents/<part>.parquet``. A part is *committed* iff its ledger file exists
  and reads back as Parquet.
* The part name is deterministic (run id, task index and a hash of the part's document ids), so
  a write task retried by Ray overwrites its own files instead of adding new ones.
* The ledger file's footer carries the part's summary (counts, and documents per input unit);
  the driver keeps an index of them (:mod:`glidre_core.extraction.state`), so it never reads
  ledger rows to count or to resume.
* After a crash, and after every run, :func:`recover` finds the committed parts; files of
  uncommitted parts (a crash between the data files and the ledger, a half-written ledger) are
  deleted, and the units of committed parts are skipped by the new run. A document is therefore
  either fully in the output exactly once or redone from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from glidre_core.extraction.schemas import (
    DOCUMENTS, ENTITIES, ERRORS, RESULT, SOURCE_PREDICTED, STATUS_EXTRACTED, STATUS_FAILED, STATUS_SKIPPED,
    TRIPLETS, VERIFY_STRUCT,
)
from glidre_core.extraction.state import (  # noqa: F401  (RECOVER_CHUNK: kept importable from here)
    RECOVER_CHUNK, OutputIndex, list_parts, part_stem, part_summary, summary_metadata, sync_index,
)
from glidre_core.extraction.storage import Location, ensure_dir, read_bytes, write_bytes

logger = logging.getLogger(__name__)

DATA_TABLES = ("triplets", "entities", "errors")
LEDGER = "documents"
MANIFEST = "_manifest.json"
RUN_STATE = "_run.json"


@dataclass(frozen=True)
class OutputLayout:
    loc: Location

    @property
    def fs(self) -> pafs.FileSystem:
        return self.loc.fs

    def dir(self, table: str) -> str:
        return self.loc.join(table)

    def part_path(self, table: str, part: str) -> str:
        return self.loc.join(table, f"{part}.parquet")

    @property
    def manifest_path(self) -> str:
        return self.loc.join(MANIFEST)

    @property
    def run_state_path(self) -> str:
        return self.loc.join(RUN_STATE)

    def make_dirs(self) -> None:
        for table in (*DATA_TABLES, LEDGER):
            ensure_dir(self.fs, self.dir(table))

    def read_json(self, path: str) -> dict[str, Any] | None:
        data = read_bytes(self.fs, path)
        return json.loads(data) if data is not None else None

    def write_json(self, path: str, obj: dict[str, Any]) -> None:
        write_bytes(self.fs, path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))


def part_name(run_id: str, task_idx: int, index: int, doc_ids: Iterable[str]) -> str:
    """Deterministic for a given task and set of documents, so retries overwrite, not add."""
    digest = hashlib.sha1("\x00".join(doc_ids).encode("utf-8")).hexdigest()[:12]
    return f"{run_id}-{task_idx:05d}-{index:04d}-{digest}"


def _list_parquet(fs: pafs.FileSystem, directory: str) -> list[str]:
    return list_parts(fs, directory, ".parquet")


def _stem(path: str) -> str:
    return part_stem(path)


def recover(layout: OutputLayout, index: OutputIndex) -> tuple[OutputIndex, int]:
    """Bring ``index`` up to date with what is committed and delete what is not.

    :func:`~glidre_core.extraction.state.sync_index` reconciles the index with the ledger
    (drops parts whose ledger is gone, reads the footers of committed parts it lacks); then the
    data tables are listed and the files of parts that never committed (and unreadable ledgers)
    are deleted. Cost: one listing per table (names only) plus one footer per part missing from
    the index. Returns the index and the number of files removed.
    """
    fs = layout.fs
    index, bad = sync_index(fs, layout.dir(LEDGER), index)
    committed = index.part_names
    orphans = list(bad)
    for table in DATA_TABLES:
        orphans += [p for p in _list_parquet(fs, layout.dir(table)) if _stem(p) not in committed]
    if orphans:
        logger.warning("removing %d files of parts that were never committed (interrupted run)", len(orphans))
    for path in orphans:
        fs.delete_file(path)
    return index, len(orphans)


def _explode(table: pa.Table, column: str, struct_type: pa.StructType) -> tuple[pa.Array, list[pa.Array]]:
    """(doc_id per child row, child columns) of a ``list<struct>`` column; null lists add nothing."""
    lists = table.column(column).combine_chunks()
    if len(lists) == 0:
        return pa.array([], pa.string()), [pa.array([], f.type) for f in struct_type]
    parents = pc.list_parent_indices(lists)
    flat = pc.list_flatten(lists)
    doc_ids = pc.take(table.column("doc_id"), parents).combine_chunks()
    return doc_ids, flat.flatten()


def _const(value: str | None, n: int) -> pa.Array:
    return pa.array([value] * n, pa.string())


def split_results(table: pa.Table, model_ref: str, run_id: str) -> dict[str, pa.Table]:
    """One :data:`RESULT` table (no skipped rows) -> the four output tables."""
    doc_ids, cols = _explode(table, "triplets", RESULT.field("triplets").type.value_type)
    triplets = pa.Table.from_arrays([doc_ids, *cols, _const(model_ref, len(doc_ids)), _const(run_id, len(doc_ids))],
                                    schema=TRIPLETS)
    doc_ids, cols = _explode(table, "entities", RESULT.field("entities").type.value_type)
    entities = pa.Table.from_arrays([doc_ids, *cols, _const(run_id, len(doc_ids))], schema=ENTITIES)
    failed = table.filter(pc.equal(table.column("status"), STATUS_FAILED))
    errors = pa.Table.from_arrays(
        [failed.column(c) for c in ("doc_id", "stage", "error_type", "field", "message", "source", "line")]
        + [_const(run_id, failed.num_rows)],
        schema=ERRORS,
    )
    n = table.num_rows
    ledger = pa.Table.from_arrays(
        [table.column("doc_id"), table.column("status"), table.column("num_entities"),
         pc.fill_null(table.column("num_triplets"), 0), table.column("source"), table.column("line"),
         _const(run_id, n), table.column("entity_source"), table.column("block")],
        schema=DOCUMENTS,
    )
    return {"triplets": triplets, "entities": entities, "errors": errors, LEDGER: ledger}


def verify_counts(table: pa.Table) -> dict[str, float]:
    """The verify stage's accounting of a :data:`RESULT` table, summed: ``verify.<field>`` for
    every field of :data:`VERIFY_STRUCT` and ``verify.docs`` (documents with accounting)."""
    if "verify" not in table.column_names or table.num_rows == 0:
        return {}
    column = table.column("verify").combine_chunks()
    docs = len(column) - column.null_count
    if not docs:
        return {}
    out: dict[str, float] = {"verify.docs": docs}
    for f in VERIFY_STRUCT:
        out[f"verify.{f.name}"] = pc.sum(pc.struct_field(column, f.name)).as_py() or 0
    return out


class ExtractionSink(Datasink[dict]):
    """Writes :data:`RESULT` rows as one committed part per write task (see the module docstring)."""

    def __init__(self, layout: OutputLayout, run_id: str, model_ref: str, docs_per_file: int,
                 progress: Any = None):
        self.progress = progress  # a ProgressTracker handle: told about every committed part
        self.layout = layout
        self.run_id = run_id
        self.model_ref = model_ref
        self.docs_per_file = docs_per_file
        self.totals: Counter = Counter()
        self.summaries: list[dict[str, Any]] = []  # of the parts this run committed

    @property
    def min_rows_per_write(self) -> int:
        return self.docs_per_file

    @property
    def supports_distributed_writes(self) -> bool:
        # A local output directory only exists on the driver's node.
        return not isinstance(self.layout.fs, pafs.LocalFileSystem)

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        self.layout.make_dirs()

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        table = pa.concat_tables(tables).cast(RESULT) if tables else RESULT.empty_table()
        statuses = Counter(table.column("status").to_pylist())
        counts = {"skipped": statuses.get(STATUS_SKIPPED, 0), "extracted": statuses.get(STATUS_EXTRACTED, 0),
                  "failed": statuses.get(STATUS_FAILED, 0), "triplets": 0, "parts": 0,
                  "predicted_entities_docs": table.column("entity_source").to_pylist().count(SOURCE_PREDICTED)}
        unknown = set(statuses) - {STATUS_SKIPPED, STATUS_EXTRACTED, STATUS_FAILED}
        if unknown:  # a bug upstream; refuse to write rows that would be silently lost
            raise RuntimeError(f"rows with unexpected status {sorted(unknown)} reached the sink")
        table = table.filter(pc.not_equal(table.column("status"), STATUS_SKIPPED))
        counts.update(verify_counts(table))
        task_idx = getattr(ctx, "task_idx", 0)
        summaries = []
        for index, start in enumerate(range(0, table.num_rows, self.docs_per_file)):
            piece = table.slice(start, self.docs_per_file)
            part = part_name(self.run_id, task_idx, index, piece.column("doc_id").to_pylist())
            summary = self._write_part(part, piece)
            summaries.append(summary)
            counts["triplets"] += summary["counts"]["triplets"]
            counts["parts"] += 1
            if self.progress is not None:
                try:
                    self.progress.add_committed.remote(piece.num_rows, summary)
                except Exception:  # noqa: BLE001 - progress is best effort, never fatal
                    logger.debug("progress report failed", exc_info=True)
        return {"counts": counts, "summaries": summaries}

    def _write_part(self, part: str, table: pa.Table) -> dict[str, Any]:
        """Write one part, the ledger (with the part's summary in its footer) LAST; returns the summary."""
        out = split_results(table, self.model_ref, self.run_id)
        summary = part_summary(part, self.run_id, table, out)
        out[LEDGER] = out[LEDGER].replace_schema_metadata(summary_metadata(summary))
        fs = self.layout.fs
        for name in (*DATA_TABLES, LEDGER):  # the ledger LAST: it commits the part
            if out[name].num_rows or name == LEDGER:
                ensure_dir(fs, self.layout.dir(name))
                pq.write_table(out[name], self.layout.part_path(name, part), filesystem=fs)
        return summary

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        for result in write_result.write_returns:
            if result:
                self.totals.update(result["counts"])
                self.summaries.extend(result["summaries"])
