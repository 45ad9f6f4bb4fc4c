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

# One module per job (imported in dependency order; no module imports a later one):
#   settings  - output layout, RESULT schema, DistillSettings, DocInput, result rows, parse_input
#   teachers  - Teacher, LLMTeacher, GlidreTeacher, build_backend / build_teacher / teacher_name
#   dataset   - DistillWorker, prepare_records, chunk_batch, build_dataset (the Ray Data plan)
#   sink      - DistillSink, error_record, ledger_table, merge_parts, part-file readers
#   driver    - DistillSetup (driver checks, refuse / overwrite / resume), RESUME_KEYS, teacher_settings
#   job       - run_distill, finalize, log_summary, summary_text

from __future__ import annotations

from glidre_core.llm.distill.settings import (
    DOCUMENTS_DIR, ERROR, ERRORS_DIR, LEDGER_DIR, MANIFEST_FILE, MERGED_FILE, OK, OUTPUT_VERSION, RESULT,
    RUN_STATE_FILE, DistillError, DistillSettings, DocInput, input_error_row, parse_input, provenance,
    result_from_chunks,
)
from glidre_core.llm.distill.teachers import (
    GlidreTeacher, LLMTeacher, Teacher, build_backend, build_teacher, teacher_name,
)
from glidre_core.llm.distill.dataset import DistillWorker, build_dataset, chunk_batch, prepare_records
from glidre_core.llm.distill.sink import DistillSink, error_record, ledger_table, merge_parts
from glidre_core.llm.distill.driver import OPERATIONAL_TEACHER_OPTIONS, RESUME_KEYS, teacher_settings
from glidre_core.llm.distill.job import finalize, log_summary, run_distill, summary_text

__all__ = [
    "DOCUMENTS_DIR", "ERROR", "ERRORS_DIR", "LEDGER_DIR", "MANIFEST_FILE", "MERGED_FILE", "OK",
    "OPERATIONAL_TEACHER_OPTIONS", "OUTPUT_VERSION", "RESULT", "RESUME_KEYS", "RUN_STATE_FILE",
    "DistillError", "DistillSettings", "DistillSink", "DistillWorker", "DocInput", "GlidreTeacher", "LLMTeacher",
    "Teacher", "build_backend", "build_dataset", "build_teacher", "chunk_batch", "error_record", "finalize",
    "input_error_row", "ledger_table", "log_summary", "merge_parts", "parse_input", "prepare_records",
    "provenance", "result_from_chunks", "run_distill", "summary_text", "teacher_name", "teacher_settings",
]
