"""What an output holds, at corpus scale: per-part summaries, the committed-units index, and the
resume plan built from it.

Why: resume used to collect every committed ``doc_id`` into one set in the driver and ship it
to every task, and to read every ledger part on every start. At 100M documents that is ~9 GB per
process and hundreds of thousands of reads. Here the bookkeeping grows with input *units*, not
documents, and only the partly done units travel to the tasks.

The unit of resume (decision): an input *unit* is one read block, ``(source file, block)``, the
``lines_per_block`` consecutive records the reader cuts (see
:class:`~glidre_core.extraction.source.UnitBlocks`). Numbering depends only on the file and
``lines_per_block`` (a resume must use the same value: it is one of the settings checked).

* Commit (unchanged protocol, see :mod:`glidre_core.extraction.output`): a part is committed when
  its ledger file exists. The ledger file's Parquet footer carries the part's summary
  (:data:`PART_META_KEY`): document, triplet, entity and error counts, and how many documents of
  each unit it holds, with the unit's size and whether it is its file's last block.
* Index: ``_state/index.json`` names two small Arrow tables, one row per part (counts) and one
  row per (part, unit). A finished run rewrites them (compaction) and lists its run id as
  *finalized*. During a run the driver also saves it every ``index_checkpoint_s`` with the parts
  committed so far (the sink reports each part's summary once its ledger is written), so a crash
  leaves at most that interval's parts to discover. The driver reads the index in
  O(parts + units); it reads no ledger rows.
* Start of a run: if the last started run (``_run.json``) is finalized, the index is complete
  and nothing else is listed or read. Otherwise the previous run crashed: the ledger directory is
  listed, the footers of the parts the index lacks are read (in parallel), files of uncommitted
  parts are deleted, and the repaired index is written at once.
* Resume plan: a unit is *complete* when its committed documents equal its size; a file is
  complete when all its blocks up to its last are. Complete files are not even opened; in the
  other files complete blocks are skipped by the reader, and only a partly committed block
  (a part boundary cut through it when the run stopped) is read with its committed line numbers.
  The plan shipped to the read tasks therefore holds only partly done files: its size depends on
  what was in flight at the crash, not on the corpus.

Why a triplet can never be written twice: every record belongs to exactly one unit; a record
whose line is committed is never read again, and an uncommitted part's files are deleted before
its documents are redone. :meth:`OutputIndex.overcommitted` checks the invariant in O(units):
no unit may hold more committed documents than records.

Two jobs use this machinery, each with its own data files: ``glidre extract`` (Parquet tables,
ledger ``documents/``) and ``glidre distill`` (JSON Lines parts, ledger ``_ledger/``). Both go
through the public functions here: :func:`new_part_summary` (the footer), :func:`sync_index` (the
ledger half of crash recovery; each job then deletes its own uncommitted files),
:func:`check_resume_settings`, :func:`open_index`, :func:`resume_plan`, and
:meth:`OutputIndex.checkpoint` / :meth:`OutputIndex.coverage`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc  # noqa: F401  (pa.ipc)
import pyarrow.parquet as pq

from glidre_core.extraction.errors import OutputError
from glidre_core.extraction.schemas import (
    SOURCE_PREDICTED, STATUS_EXTRACTED, STATUS_FAILED,
)
from glidre_core.extraction.source import FileSkip
from glidre_core.extraction.storage import ensure_dir, read_bytes, write_bytes

logger = logging.getLogger(__name__)

#: Key of the part summary in the ledger file's Parquet footer (schema metadata).
PART_META_KEY = b"glidre.part"
STATE_DIR = "_state"
INDEX_FILE = "index.json"
COUNT_KEYS = ("extracted", "failed", "predicted", "triplets", "entities", "errors",
              "predicted_triplets", "predicted_entities")

PARTS = pa.schema([("part", pa.string()), ("run_id", pa.string()),
                   *[(k, pa.int64()) for k in COUNT_KEYS]])
UNITS = pa.schema([("part", pa.string()), ("source", pa.string()), ("block", pa.int64()),
                   ("block_size", pa.int64()), ("block_last", pa.bool_()), ("docs", pa.int64())])


@contextlib.contextmanager
def system_allocator() -> Iterator[None]:
    """Run the driver's bookkeeping on the system allocator, then restore the previous pool.

    Measured (``benchmarks/resume_scale.py``, 10M documents): pyarrow's default jemalloc pool
    keeps per-thread arenas and freed pages, so the many small reads of resume planning (index
    tables, one footer per part, in 16 threads) left the driver 74 MB above its imports, against
    24 MB with the system allocator, at no measurable cost in time. The pool is process-wide, so
    it is set only around these steps.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def unit_counts(result: pa.Table) -> list[list[Any]]:
    """``[source, block, block_size, block_last, documents]`` per input unit of a part's rows.

    Public because every job that commits parts through a ledger (extract, distill) needs the
    same units in its summary: they are what :func:`resume_plan` skips by. ``result`` needs the
    reader's ``source``, ``block``, ``block_size`` and ``block_last`` columns.
    """
    grouped = result.group_by(["source", "block", "block_size", "block_last"], use_threads=False).aggregate(
        [([], "count_all")])
    return [[s, b, z, bool(last), n] for s, b, z, last, n in zip(
        *(grouped.column(c).to_pylist() for c in ("source", "block", "block_size", "block_last", "count_all")))]


def new_part_summary(part: str, run_id: str, counts: dict[str, int], result: pa.Table) -> dict[str, Any]:
    """The summary of one part from its counts (the :data:`COUNT_KEYS` it has; the others are
    0) and its rows (for the units). Another job than extract maps its own outcomes onto the
    count keys (e.g. distill: written documents -> ``extracted``, errors -> ``failed``)."""
    return {"part": part, "run_id": run_id, "counts": {k: int(counts.get(k, 0)) for k in COUNT_KEYS},
            "units": unit_counts(result)}


def part_summary(part: str, run_id: str, result: pa.Table, tables: dict[str, pa.Table]) -> dict[str, Any]:
    """The summary of one extract part: from its :data:`RESULT` rows and the tables written for it."""
    status = result.column("status")
    predicted = pc.and_(pc.equal(status, STATUS_EXTRACTED), pc.equal(result.column("entity_source"), SOURCE_PREDICTED))
    counts = {
        "extracted": pc.sum(pc.equal(status, STATUS_EXTRACTED)).as_py() or 0,
        "failed": pc.sum(pc.equal(status, STATUS_FAILED)).as_py() or 0,
        "predicted": pc.sum(pc.and_(pc.equal(status, STATUS_EXTRACTED),
                                    pc.equal(result.column("entity_source"), SOURCE_PREDICTED))).as_py() or 0,
        "triplets": tables["triplets"].num_rows, "entities": tables["entities"].num_rows,
        "errors": tables["errors"].num_rows,
        # from documents whose entities were predicted (raw text): the part of the graph that
        # rests on the entity recognizer, reported separately at the end of a run
        "predicted_triplets": pc.sum(pc.if_else(predicted, result.column("num_triplets"), 0)).as_py() or 0,
        "predicted_entities": pc.sum(pc.if_else(predicted, result.column("num_entities"), 0)).as_py() or 0,
    }
    return new_part_summary(part, run_id, counts, result)


def summary_metadata(summary: dict[str, Any]) -> dict[bytes, bytes]:
    return {PART_META_KEY: json.dumps(summary, separators=(",", ":")).encode("utf-8")}


def read_part_summary(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    """The summary in a ledger file's footer (no data read); None if the file has none."""
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    raw = meta.get(PART_META_KEY)
    return json.loads(raw) if raw else None


@dataclass
class ResumePlan:
    """What a run skips: whole files, and per partly done file the :class:`FileSkip`."""

    done_files: set[str] = field(default_factory=set)
    skip: dict[str, FileSkip] = field(default_factory=dict)
    committed_docs: int = 0

    def files_to_read(self, files: Iterable[str], sources: dict[str, str]) -> list[str]:
        """``files`` (input paths) less the complete ones; ``sources`` maps a path to its source
        name (relative to the input root), the name the plan is keyed by."""
        return [f for f in files if sources[f] not in self.done_files]

    def shipped_bytes(self) -> int:
        """Bytes of the part of the plan that travels to the read tasks."""
        import pickle

        return len(pickle.dumps(self.skip))


@dataclass
class Coverage:
    """How far an output covers its input, from the index alone (O(units)): the checks that end
    every run of a job that commits parts through a ledger (see :meth:`OutputIndex.coverage`)."""

    units: pa.Table  # :meth:`OutputIndex.unit_table`
    done_files: set[str]  # sources whose every unit is complete
    partial: dict[str, set[int]]  # partly committed blocks per source
    overcommitted: int  # documents committed beyond their unit's size: each is a duplicate, must be 0
    with_units: set[str]  # sources with at least one committed record
    incomplete: list[str]  # input sources with records but not complete (sorted): documents lost

    def input_fields(self, sources: set[str]) -> dict[str, Any]:
        """The manifest's ``input_files_*`` fields for the input ``sources``."""
        return {"input_files_complete": len(sources & self.done_files),
                "input_files_without_records": len(sources - self.with_units),
                "input_files_incomplete": self.incomplete[:20]}


class OutputIndex:
    """The committed parts and units of one output (see the module docstring)."""

    def __init__(self, parts: pa.Table | None = None, units: pa.Table | None = None,
                 finalized_runs: Iterable[str] = ()):
        self.parts = parts if parts is not None else PARTS.empty_table()
        self.units = units if units is not None else UNITS.empty_table()
        self.finalized_runs = list(dict.fromkeys(finalized_runs))
        self._names: set[str] | None = None

    # -- building ----------------------------------------------------------------------------
    @property
    def part_names(self) -> set[str]:
        if self._names is None:
            self._names = set(self.parts.column("part").to_pylist())
        return self._names

    def add(self, summaries: Iterable[dict[str, Any]]) -> int:
        """Add the summaries of parts not yet indexed; returns how many were new."""
        known = self.part_names
        rows: dict[str, list] = defaultdict(list)
        urows: dict[str, list] = defaultdict(list)
        for s in summaries:
            if s["part"] in known:
                continue
            known.add(s["part"])
            rows["part"].append(s["part"])
            rows["run_id"].append(s["run_id"])
            for k in COUNT_KEYS:
                rows[k].append(int(s["counts"].get(k, 0)))
            for source, block, size, last, n in s["units"]:
                for key, value in zip(UNITS.names, (s["part"], source, block, size, last, n)):
                    urows[key].append(value)
        if not rows:
            return 0
        self.parts = pa.concat_tables([self.parts, pa.table(dict(rows), schema=PARTS)])
        self.units = pa.concat_tables([self.units, pa.table({k: urows.get(k, []) for k in UNITS.names},
                                                            schema=UNITS)])
        return len(rows["part"])

    def retain(self, names: set[str]) -> int:
        """Keep only the parts in ``names`` (the ledger files that exist); returns how many went."""
        gone = self.part_names - names
        if gone:
            keep = pa.array(sorted(names & self.part_names), pa.string())
            self.parts = self.parts.filter(pc.is_in(self.parts.column("part"), keep))
            self.units = self.units.filter(pc.is_in(self.units.column("part"), keep))
            self._names = None
        return len(gone)

    # -- reading -----------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        return {k: int(pc.sum(self.parts.column(k)).as_py() or 0) for k in COUNT_KEYS}

    def per_run(self) -> dict[str, dict[str, int]]:
        if not self.parts.num_rows:
            return {}
        g = self.parts.group_by("run_id").aggregate([(k, "sum") for k in ("extracted", "failed", "triplets")])
        out = {}
        for row in g.to_pylist():
            out[row["run_id"]] = {"docs_extracted": row["extracted_sum"], "docs_failed": row["failed_sum"],
                                  "triplets": row["triplets_sum"]}
        return out

    def unit_table(self) -> pa.Table:
        """One row per unit: source, block, block_size, block_last, committed documents."""
        if not self.units.num_rows:
            return pa.table({"source": pa.array([], pa.string()), "block": pa.array([], pa.int64()),
                             "block_size": pa.array([], pa.int64()), "block_last": pa.array([], pa.bool_()),
                             "committed": pa.array([], pa.int64())})
        # numpy rather than Table.group_by: Acero's group-by added 17 MB of native memory to the
        # driver at 10M documents (19k rows), this adds a few arrays of that length
        import numpy as np

        source = pc.dictionary_encode(self.units.column("source")).combine_chunks()
        codes = source.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        block = pc.fill_null(self.units.column("block"), -1).to_numpy()  # null: a record without a unit
        key = codes * (int(block.max()) + 2) + (block + 1)
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        n = len(uniq)
        size = np.zeros(n, np.int64)
        np.maximum.at(size, inverse, pc.fill_null(self.units.column("block_size"), 0).to_numpy())
        last = np.zeros(n, bool)
        np.logical_or.at(last, inverse, pc.fill_null(self.units.column("block_last"), False).to_numpy(
            zero_copy_only=False))
        committed = np.bincount(inverse, weights=pc.fill_null(self.units.column("docs"), 0).to_numpy(),
                                minlength=n).astype(np.int64)
        return pa.table({"source": pc.take(source.dictionary, pa.array(codes[first])),
                         "block": pa.array(block[first]), "block_size": pa.array(size),
                         "block_last": pa.array(last), "committed": pa.array(committed)})

    def overcommitted(self, units: pa.Table | None = None) -> int:
        """Documents committed beyond their unit's size (must be 0: each would be a duplicate)."""
        u = self.unit_table() if units is None else units
        if not u.num_rows:
            return 0
        excess = pc.subtract(u.column("committed"), u.column("block_size"))
        return int(pc.sum(pc.max_element_wise(excess, 0)).as_py() or 0)

    def coverage(self, sources: set[str]) -> Coverage:
        """The :class:`Coverage` of the input ``sources`` (names relative to the input root)."""
        units = self.unit_table()
        done, _, partial = self.file_status(units)
        with_units = set(units.column("source").to_pylist()) if units.num_rows else set()
        return Coverage(units=units, done_files=done, partial=partial, overcommitted=self.overcommitted(units),
                        with_units=with_units, incomplete=sorted((sources & with_units) - done))

    def file_status(self, units: pa.Table | None = None) -> tuple[set[str], dict[str, set[int]],
                                                                  dict[str, set[int]]]:
        """(complete files, complete blocks per other file, partly committed blocks per file).

        Vectorised per file (numpy over the unit table): only the files that are *not* complete
        become Python sets, so the driver's cost after a mostly finished run is O(files) objects.
        """
        import numpy as np

        u = self.unit_table() if units is None else units
        if not u.num_rows:
            return set(), {}, {}
        block = u.column("block").to_numpy()
        real = block >= 0  # records that came without a unit: nothing to skip by
        source = pc.dictionary_encode(u.column("source")).combine_chunks()
        codes = source.indices.to_numpy(zero_copy_only=False)
        names = source.dictionary.to_pylist()
        committed = u.column("committed").to_numpy()
        complete = real & (committed >= u.column("block_size").to_numpy())
        partly = real & ~complete & (committed > 0)
        last = real & u.column("block_last").to_numpy(zero_copy_only=False)
        n = len(names)
        last_block = np.full(n, -1, np.int64)
        np.maximum.at(last_block, codes[last], block[last])
        # unit_table has one row per (source, block), so counting complete rows counts blocks
        within = complete & (block <= last_block[codes])
        n_complete = np.bincount(codes[within], minlength=n)
        n_partly = np.bincount(codes[partly], minlength=n)
        is_done = (last_block >= 0) & (n_partly == 0) & (n_complete == last_block + 1)
        done = {names[i] for i in np.flatnonzero(is_done)}
        complete_blocks: dict[str, set[int]] = defaultdict(set)
        partial: dict[str, set[int]] = defaultdict(set)
        open_rows = ~is_done[codes]
        for code, b in zip(codes[complete & open_rows].tolist(), block[complete & open_rows].tolist()):
            complete_blocks[names[code]].add(b)
        for code, b in zip(codes[partly].tolist(), block[partly].tolist()):
            partial[names[code]].add(b)
        return done, dict(complete_blocks), dict(partial)

    def checkpoint(self, fs: pafs.FileSystem, root: str, summaries: Iterable[dict[str, Any]]) -> int:
        """Add the parts committed so far and save the index (the run is *not* marked finalized):
        after a crash, recovery then reads only the footers of parts committed since. Returns
        how many parts were new (nothing is written when none was)."""
        added = self.add(summaries)
        if added:
            self.save(fs, root)
            logger.info("index checkpoint: %d parts (+%d)", self.parts.num_rows, added)
        return added

    # -- persistence -------------------------------------------------------------------------
    @staticmethod
    def load(fs: pafs.FileSystem, root: str) -> "OutputIndex | None":
        data = read_bytes(fs, posixpath.join(root, STATE_DIR, INDEX_FILE))
        if data is None:
            return None
        spec = json.loads(data)
        try:
            parts = _read_table(fs, posixpath.join(root, STATE_DIR, spec["parts"]), PARTS)
            units = _read_table(fs, posixpath.join(root, STATE_DIR, spec["units"]), UNITS)
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            logger.warning("the output index is unreadable (%s): rebuilding it from the ledger footers", exc)
            return None
        return OutputIndex(parts, units, spec.get("finalized_runs", []))

    def save(self, fs: pafs.FileSystem, root: str) -> None:
        """Write the tables under new names, then ``index.json`` (the commit), then drop old tables.

        The tables are uncompressed Arrow IPC files (index version 2), not Parquet: reading
        them back is a copy, with no decoding buffers. Measured at 10M documents (7,840 parts,
        15,640 units): +4 MB of driver memory against +14 MB for the same tables as Parquet
        (version 1, still read).
        """
        state = posixpath.join(root, STATE_DIR)
        ensure_dir(fs, state)
        tag = uuid.uuid4().hex[:10]
        names = {"parts": f"parts-{tag}.arrow", "units": f"units-{tag}.arrow"}
        for key, table in (("parts", self.parts), ("units", self.units)):
            with fs.open_output_stream(posixpath.join(state, names[key])) as out:
                with pa.ipc.new_file(out, table.schema) as writer:
                    writer.write_table(table)
        write_bytes(fs, posixpath.join(state, INDEX_FILE), json.dumps(
            {"version": 2, **names, "finalized_runs": self.finalized_runs}, indent=1).encode("utf-8"))
        for info in fs.get_file_info(pafs.FileSelector(state, allow_not_found=True)):
            base = posixpath.basename(info.path)
            if base.endswith((".parquet", ".arrow")) and base not in names.values():
                fs.delete_file(info.path)


def _read_table(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> pa.Table:
    """One index table: Arrow IPC (version 2) or Parquet (version 1), single-threaded and
    without the dataset layer (whose thread pools cost the driver more native memory than these
    small tables hold)."""
    with fs.open_input_file(path) as f:
        if path.endswith(".parquet"):
            table = pq.ParquetFile(f).read(use_threads=False)
        else:
            table = pa.ipc.open_file(f).read_all()
    for col in schema:  # an index written before a count was added: that count is 0 there
        if col.name not in table.column_names:
            if not pa.types.is_integer(col.type):
                raise ValueError(f"{path} lacks column {col.name!r}")
            table = table.append_column(col, pa.array([0] * table.num_rows, col.type))
    return table.select(schema.names).cast(schema)


def read_summaries(fs: pafs.FileSystem, paths: list[str], threads: int = 16) -> tuple[list[dict], list[str]]:
    """Footer summaries of ledger files (in parallel); returns (summaries, unreadable paths).

    A ledger without a summary was written by a version before units (schema < 3): such an
    output cannot be resumed by units, which is a whole-run error with its remedy.
    """
    def one(path: str) -> tuple[str, dict | None, bool]:
        try:
            return path, read_part_summary(fs, path), True
        except (OSError, pa.ArrowException) as exc:
            logger.warning("ledger part %s is unreadable (%s): treating the part as not written", path, exc)
            return path, None, False

    summaries, bad = [], []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, summary, ok in pool.map(one, paths):
            if not ok:
                bad.append(path)
            elif summary is None:
                raise OutputError(f"{path} has no unit summary: the output was written by an older glidre "
                                  "(output schema < 3) and cannot be resumed; use --overwrite")
            else:
                summaries.append(summary)
    return summaries, bad


def committed_lines(fs: pafs.FileSystem, ledger_dir: str, index: OutputIndex,
                    partial: dict[str, set[int]]) -> dict[str, dict[int, frozenset[int]]]:
    """The committed line numbers of the partly committed blocks, read from the few ledger
    parts that hold them (found through the index, not by scanning)."""
    if not partial:
        return {}
    wanted = {(s, b) for s, blocks in partial.items() for b in blocks}
    u = index.units
    # narrow to the partial files' rows in Arrow first: only those become Python objects
    u = u.filter(pc.is_in(u.column("source"), pa.array(sorted(partial), pa.string())))
    parts = {p for p, s, b in zip(*(u.column(c).to_pylist() for c in ("part", "source", "block")))
             if (s, b) in wanted}
    lines: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for part in sorted(parts):
        with fs.open_input_file(posixpath.join(ledger_dir, f"{part}.parquet")) as f:
            t = pq.ParquetFile(f).read(columns=["source", "block", "line"], use_threads=False)
        for s, b, ln in zip(*(t.column(c).to_pylist() for c in ("source", "block", "line"))):
            if (s, b) in wanted:
                lines[s][b].add(ln)
    return {s: {b: frozenset(v) for b, v in blocks.items()} for s, blocks in lines.items()}


@system_allocator()
def resume_plan(index: OutputIndex, fs: pafs.FileSystem, ledger_dir: str) -> ResumePlan:
    """The :class:`ResumePlan` of an output whose index is complete."""
    units = index.unit_table()
    done, complete_blocks, partial = index.file_status(units)
    lines = committed_lines(fs, ledger_dir, index, partial)
    skip = {}
    for source in set(complete_blocks) | set(lines):
        skip[source] = FileSkip(frozenset(complete_blocks.get(source, ())), lines.get(source, {}))
    committed = int(pc.sum(units.column("committed")).as_py() or 0) if units.num_rows else 0
    return ResumePlan(done_files=done, skip=skip, committed_docs=committed)


#: Ledger footers read (and added to the index) per step of crash recovery.
RECOVER_CHUNK = 256


def part_stem(path: str) -> str:
    """The part name of a part file: its base name without the extension (``.parquet``,
    ``.jsonl``). Every file of one part has the same stem, in every table directory."""
    base = posixpath.basename(path)
    return base.rsplit(".", 1)[0] if "." in base else base


def list_parts(fs: pafs.FileSystem, directory: str, suffix: str) -> list[str]:
    """The files of ``directory`` ending with ``suffix``, sorted (one listing, names only)."""
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def sync_index(fs: pafs.FileSystem, ledger_dir: str, index: OutputIndex) -> tuple[OutputIndex, list[str]]:
    """Bring ``index`` up to date with the ledger files under ``ledger_dir``: drop indexed parts
    whose ledger is gone, add the summaries of committed parts the index lacks.

    The ledger half of crash recovery, shared by the jobs that commit parts this way (each then
    deletes the data files of parts that are not in the index: only it knows its tables).
    Cost: one listing plus one footer per part missing from the index, read in chunks of
    :data:`RECOVER_CHUNK` so that the driver holds one chunk of summaries at a time. Returns
    the index and the ledger files that are unreadable (torn writes: not commits).
    """
    ledgers = list_parts(fs, ledger_dir, ".parquet")
    missing = index.retain({part_stem(p) for p in ledgers})
    if missing:  # never happens by itself (committed parts are not deleted): someone removed files
        logger.warning("index: %d indexed parts have no ledger file any more; their documents will be redone",
                       missing)
    unknown = [p for p in ledgers if part_stem(p) not in index.part_names]
    # threads hide object-store latency, a local disk gains nothing from more than a few
    threads = 4 if fs.type_name == "local" else 16
    added, bad = 0, []
    for start in range(0, len(unknown), RECOVER_CHUNK):
        summaries, unreadable = read_summaries(fs, unknown[start:start + RECOVER_CHUNK], threads=threads)
        added += index.add(summaries)
        bad += unreadable
        del summaries
    if added:
        logger.info("index: added %d committed parts found in the ledger", added)
    return index, bad


def check_resume_settings(uri: str, previous: dict[str, Any], settings: dict[str, Any],
                          keys: Iterable[str]) -> None:
    """Refuse to resume an output written with other settings: raises :class:`OutputError`
    naming the first setting of ``keys`` that differs (``teacher.threshold`` rather than the
    whole ``teacher`` when the setting is a mapping), with both values.

    Why: a resumed output mixes documents of two runs; if any setting that changes what is
    written differed, the output would silently hold two kinds of results. A key absent from
    ``previous`` (an output written before the setting existed) is not checked.
    """
    for key in keys:
        if key in previous and previous[key] != settings.get(key):
            name, old, new = _first_difference(key, previous[key], settings.get(key))
            raise OutputError(f"cannot resume {uri!r}: it was written with {name}={old!r}, this run has "
                              f"{name}={new!r} (use --overwrite to start again)")


def _first_difference(name: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return _first_difference(f"{name}.{k}", old.get(k), new.get(k))
    return name, old, new


def open_index(fs: pafs.FileSystem, root: str, last_run: str | None,
               recover: Callable[[OutputIndex], tuple[OutputIndex, int]]) -> OutputIndex:
    """The committed-units index of an existing output that is being resumed.

    After a run that finished (``last_run``, the run id of ``_run.json``, is finalized in the
    saved index) the index is read as is: O(parts + units), no listing. Otherwise the previous
    run crashed: ``recover`` (the job's own: :func:`sync_index` plus deleting its uncommitted
    data files) repairs it, and the repaired index is saved at once.
    """
    index = OutputIndex.load(fs, root)
    if index is None or last_run not in index.finalized_runs:
        logger.info("resume: run %s did not finish; checking the output's parts", last_run)
        index, _removed = recover(index or OutputIndex())
        index.save(fs, root)
    return index
