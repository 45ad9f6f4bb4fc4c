"""What the driver checks before Ray work starts (:class:`DistillSetup`: input, output, prompt,
teacher) and the output's refuse / overwrite / resume handling, with the settings a resume
must share (:data:`RESUME_KEYS`, :func:`teacher_settings`)."""

from __future__ import annotations

import json
import logging
import posixpath
from datetime import datetime
from typing import Any

from glidre_core.llm.config import (
    DistillConfig, GlidreTeacherConfig, OpenAIBackendConfig, RayVLLMBackendConfig, TransformersBackendConfig,
)
from glidre_core.llm.distill.settings import (
    DOCUMENTS_DIR, ERRORS_DIR, LEDGER_DIR, OUTPUT_VERSION, RUN_STATE_FILE, DistillError, DistillSettings,
)
from glidre_core.llm.distill.sink import list_part_files
from glidre_core.llm.distill.teachers import teacher_name
from glidre_core.llm.prompts import get_prompt

logger = logging.getLogger(__name__)


#: Settings that must match between an interrupted run and its ``--resume``: everything that
#: changes what a document's line in ``documents/`` or ``errors/`` says (see
#: :meth:`DistillSetup.run_settings`).
RESUME_KEYS = ("teacher", "prompt", "prompt_fingerprint", "generation", "entity_types", "relation_types",
               "chunk_chars", "max_text_chars", "strict", "lines_per_block", "output_version")

#: Per teacher kind, the options that only say where and how fast the teacher runs, never what it
#: answers: they may change between a run and its resume (a moved endpoint, another GPU count).
#: Every other option (a new one too) must match.
OPERATIONAL_TEACHER_OPTIONS: dict[str, frozenset[str]] = {
    "openai": frozenset({"base_url", "api_key_env", "max_concurrency", "requests_per_minute", "tokens_per_minute",
                         "timeout_s", "connect_timeout_s", "max_retries", "backoff_initial_s", "backoff_max_s"}),
    "transformers": frozenset({"device", "batch_size", "torch_threads", "cache_dir"}),
    "ray_vllm": frozenset({"concurrency", "batch_size", "accelerator_type", "max_concurrent_batches",
                           "max_pending_requests", "runtime_env", "placement_group_config",
                           "should_continue_on_error"}),
    "glidre": frozenset({"tracking_uri", "batch_size", "device"}),
}


def teacher_settings(cfg: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The teacher options a resumed run must share (see :data:`OPERATIONAL_TEACHER_OPTIONS`);
    for a GLiDRE teacher also the label sets it resolved (``info``), so that another model saved
    under the same path is noticed when its labels differ."""
    out = cfg.model_dump(mode="json", exclude=set(OPERATIONAL_TEACHER_OPTIONS.get(cfg.kind, ())))
    if isinstance(cfg, GlidreTeacherConfig) and info:
        out["relation_labels"] = info.get("relation_labels")
        out["entity_types"] = info.get("entity_types")
    return out


class DistillSetup:
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
        #: files of uncommitted parts deleted by :meth:`recover` in this run (at the start of a
        #: resume and at the end), reported in the manifest
        self.files_removed = 0

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

    # -- the output: refuse / overwrite / resume ------------------------------------------------
    def path(self, *names: str) -> str:
        return posixpath.join(self.output.path, *names)

    def run_settings(self) -> dict[str, Any]:
        """What :data:`RESUME_KEYS` compares, as it reads back from ``_run.json`` (JSON values)."""
        cfg = self.cfg
        settings = {
            "teacher": teacher_settings(cfg.teacher, self.teacher_info), "prompt": self.prompt.key,
            "prompt_fingerprint": self.prompt.fingerprint, "generation": cfg.generation.model_dump(mode="json"),
            "entity_types": cfg.entity_types, "relation_types": cfg.relation_types, "chunk_chars": cfg.chunk_chars,
            "max_text_chars": cfg.max_text_chars, "strict": cfg.strict, "lines_per_block": cfg.lines_per_block,
            "output_version": OUTPUT_VERSION,
        }
        return json.loads(json.dumps(settings, default=str))

    def read_run_state(self) -> dict[str, Any] | None:
        from glidre_core.extraction.storage import read_bytes

        data = read_bytes(self.output.fs, self.path(RUN_STATE_FILE))
        return json.loads(data) if data is not None else None

    def write_run_state(self, settings: dict[str, Any], run_id: str, started: datetime) -> None:
        """``_run.json``, written before any part: what the run was started with (what the next
        ``--resume`` is checked against) and its run id (whether it finished: see open_index)."""
        from glidre_core.extraction.storage import write_bytes

        state = {**settings, "run_id": run_id, "started_at": started.isoformat(), "input": self.cfg.input}
        write_bytes(self.output.fs, self.path(RUN_STATE_FILE),
                    json.dumps(state, indent=2, sort_keys=True).encode("utf-8"))

    def recover(self, index: Any) -> tuple[Any, int]:
        """Bring ``index`` up to date with the ledger and delete the ``documents/`` and
        ``errors/`` files of parts that never committed (a crash between the data files and
        the ledger, a torn ledger): their records are redone. Returns the index and the number
        of files removed."""
        from glidre_core.extraction.state import part_stem, sync_index

        fs = self.output.fs
        index, bad = sync_index(fs, self.path(LEDGER_DIR), index)
        committed = index.part_names
        orphans = list(bad) + [p for d in (DOCUMENTS_DIR, ERRORS_DIR) for p in list_part_files(fs, self.path(d))
                               if part_stem(p) not in committed]
        if orphans:
            logger.warning("removing %d files of parts that were never committed (interrupted run)", len(orphans))
        for p in orphans:
            fs.delete_file(p)
        self.files_removed += len(orphans)
        return index, len(orphans)

    def prepare_output(self, settings: dict[str, Any] | None = None) -> Any:
        """Refuse / overwrite / resume an existing output; returns its committed-units index
        (:class:`~glidre_core.extraction.state.OutputIndex`, empty for a new output)."""
        from glidre_core.extraction.errors import OutputError
        from glidre_core.extraction.state import OutputIndex, check_resume_settings, open_index
        from glidre_core.extraction.storage import delete_tree, is_empty

        cfg = self.cfg
        settings = settings if settings is not None else self.run_settings()
        existing = not is_empty(self.output)
        if existing and cfg.overwrite:
            logger.warning("overwrite: deleting everything under %s", self.output.uri)
            delete_tree(self.output)
            return OutputIndex()
        if existing and not cfg.resume:
            raise DistillError(f"output {cfg.output!r} already exists: pass --resume to continue it or "
                               "--overwrite to replace it")
        if not existing:
            if cfg.resume:
                logger.info("--resume: %s is empty, starting a fresh run", self.output.uri)
            return OutputIndex()
        previous = self.read_run_state()
        if previous is None:
            raise DistillError(f"cannot resume {cfg.output!r}: it has no {RUN_STATE_FILE} (not a distill output, "
                               "or one written before --resume existed); use --overwrite to start again")
        try:
            check_resume_settings(self.output.uri, previous, settings, RESUME_KEYS)
        except OutputError as exc:
            raise DistillError(str(exc)) from None
        return open_index(self.output.fs, self.output.path, previous.get("run_id"), self.recover)
