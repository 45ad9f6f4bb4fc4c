"""The output parts: :class:`DistillSink` writes each write task's rows as one committed part
(``documents/``, ``errors/``, then its ledger), and the readers of those parts on the driver
(line counts, the part listing, :func:`merge_parts`)."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from ray.data.datasource.datasink import Datasink

from glidre_core.llm.distill.settings import DOCUMENTS_DIR, ERRORS_DIR, LEDGER_DIR, OK

logger = logging.getLogger(__name__)


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


def count_lines(fs: pafs.FileSystem, path: str) -> int:
    """The number of lines (newlines) of the file at ``path``, streamed."""
    with fs.open_input_stream(path) as f:
        n = 0
        while chunk := f.read(8 << 20):
            n += chunk.count(b"\n")
    return n


def count_error_lines(fs: pafs.FileSystem, path: str) -> tuple[int, Counter]:
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


def list_part_files(fs: pafs.FileSystem, directory: str) -> list[str]:
    """The ``.jsonl`` part files of ``directory`` (``documents/`` or ``errors/``)."""
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
