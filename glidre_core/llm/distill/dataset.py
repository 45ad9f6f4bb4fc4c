"""The Ray Data stages: input records to result rows (:class:`DistillWorker`, the actor of the
pool), the ``ray_vllm`` chunking (:func:`chunk_batch`) and the plan up to the write
(:func:`build_dataset`)."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from glidre_core.llm.config import RayVLLMBackendConfig
from glidre_core.llm.distill.settings import (
    BACKEND, ERROR, OK, RESULT, DistillSettings, DocInput, input_error_row, parse_input, result_row,
)
from glidre_core.llm.distill.teachers import build_teacher

if TYPE_CHECKING:
    from glidre_core.llm.distill.driver import DistillSetup

logger = logging.getLogger(__name__)


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
            labelled = iter(result_row(d, ERROR, error_type=BACKEND, field="<teacher>",
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


def build_dataset(setup: DistillSetup, progress: Any = None, resume: Any = None) -> Any:
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
