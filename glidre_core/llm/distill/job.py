"""The job: :func:`run_distill` (setup, resume plan, the Ray Data run), :func:`finalize` (the
reconciliation, the merged file, ``_manifest.json``) and the summaries."""

from __future__ import annotations

import json
import logging
import posixpath
from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np

from glidre_core.llm.config import DistillConfig
from glidre_core.llm.distill.dataset import build_dataset
from glidre_core.llm.distill.driver import DistillSetup
from glidre_core.llm.distill.settings import (
    DOCUMENTS_DIR, ERRORS_DIR, LEDGER_DIR, MANIFEST_FILE, MERGED_FILE, OUTPUT_VERSION, DistillError,
)
from glidre_core.llm.distill.sink import (
    DistillSink, count_error_lines, count_lines, list_part_files, merge_parts,
)

logger = logging.getLogger(__name__)


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    """Run the whole job; returns the manifest (also written to ``<output>/_manifest.json``).

    Raises :class:`DistillError` for whole-run failures; per-document failures end up in
    ``errors/`` and in the manifest counts.
    """
    from glidre_core.extraction.manifest import new_run_id, utc_now
    from glidre_core.extraction.progress import InputSize, write_with_progress
    from glidre_core.extraction.resources import resource_view_text
    from glidre_core.extraction.session import ray_session
    from glidre_core.extraction.state import ResumePlan, resume_plan

    started = utc_now()
    run_id = new_run_id(started)
    setup = DistillSetup(cfg)
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
            snapshot = write_with_progress(
                lambda tracker: build_dataset(setup, tracker, resume), sink, job="distill", run_id=run_id,
                size=InputSize(committed_before=resume.committed_docs), interval_s=cfg.progress_interval_s,
                stall_timeout_s=cfg.stall_timeout_s, checkpoint=lambda summaries: index.checkpoint(fs, root, summaries),
                checkpoint_interval_s=cfg.index_checkpoint_s, num_cpus=cfg.read_num_cpus, stall_error=DistillError,
                view_text=resource_view_text)
    else:
        logger.info("resume: every input file is already complete; nothing to send to the teacher")
    manifest = finalize(setup, sink, run_id, started, snapshot, index, resume.committed_docs)
    log_summary(manifest)
    return manifest


def finalize(setup: DistillSetup, sink: DistillSink, run_id: str, started: datetime,
             snapshot: dict[str, Any] | None = None, index: Any = None, committed_before: int = 0) -> dict[str, Any]:
    """Reconcile the whole output with the input and with what is on disk, merge, save the index
    (this run finalized), write ``_manifest.json`` (last).

    Document counts (read, written, errored, by error type, entities, relations) are the whole
    output's: this run's parts from the sink, earlier runs' from the index
    (:meth:`DistillSetup.recover` adds any committed part neither knows and deletes uncommitted
    files). What a run *cost* or did to the answers (tokens, chunks, requests, drops, repairs,
    documents without relations, throughput) is this run's. The checks:
    ``docs_read = docs_written + docs_errored``; every committed part's files hold the lines its
    ledger says, and no other part file exists; no input record is committed twice (per unit,
    and by key within this run); every input file with records is complete.
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
    doc_parts = list_part_files(fs, posixpath.join(root, DOCUMENTS_DIR))
    err_parts = list_part_files(fs, posixpath.join(root, ERRORS_DIR))
    unexpected = sorted(set(doc_parts + err_parts) - set(expected))
    merged = None
    if cfg.merge_output:
        on_disk, size = merge_parts(fs, doc_parts, posixpath.join(root, MERGED_FILE))
        merged = {"path": posixpath.join(cfg.output.rstrip("/"), MERGED_FILE), "documents": sum(on_disk.values()),
                  "bytes": size}
    else:
        on_disk = {p: count_lines(fs, p) for p in doc_parts}
    doc_lines = sum(on_disk.values())
    error_types: Counter = Counter()
    for p in err_parts:
        on_disk[p], types = count_error_lines(fs, p)
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
