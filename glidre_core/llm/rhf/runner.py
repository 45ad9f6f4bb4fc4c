"""Running the RHF baseline on labelled documents and scoring it with GLiDRE's metric.

``glidre evaluate --model llm:CONFIG.yaml --data FILE --format docred`` lands in
:func:`evaluate_llm`: the same reader (:func:`glidre_core.readers.read_documents`), the same
candidate labels (:func:`glidre_core.evaluation.evaluation_labels`: the 96 Re-DocRED labels for
``docred``), the same conversion of prediction rows to facts
(:func:`glidre_core.evaluation.prediction_facts`) and the same metric
(:func:`glidre_core.metrics.evaluate_facts`) as a GLiDRE evaluation.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glidre_core.documents import Document
from glidre_core.llm.base import LLMBackend, Usage
from glidre_core.llm.rhf.config import RHFConfig, RHFError, load_rhf_config
from glidre_core.llm.rhf.core import ANSWER_OUTCOMES, DROP_REASONS, RHFBatch, StepStats
from glidre_core.llm.rhf.prompts import STEPS, RHFPrompt, get_rhf_prompt
from glidre_core.rows import TripletRow

logger = logging.getLogger(__name__)


def build_rhf_backend(cfg: RHFConfig) -> LLMBackend:
    """The configured backend, checked (``backend.check()``) unless ``check_backend: false``."""
    from glidre_core.llm.base import BackendError
    from glidre_core.llm.distill import build_backend, teacher_name

    name = teacher_name(cfg.backend)
    try:
        backend = build_backend(cfg.backend)
    except (BackendError, OSError, ValueError, ImportError) as exc:
        raise RHFError(f"LLM backend {name}: cannot start: {exc}") from exc
    if cfg.check_backend:
        try:
            backend.check()
        except BackendError as exc:
            backend.close()
            raise RHFError(f"LLM backend {name}: {exc}") from exc
    return backend


@dataclass
class RHFRun:
    """The predictions of a run and its accounting."""

    predictions: list[list[TripletRow]]
    stats: dict[str, StepStats]
    seconds: float
    chunks: int = 0
    truncated_docs: int = 0
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def usage(self) -> dict[str, dict[str, int]]:
        total = Usage()
        out = {}
        for s in STEPS:
            out[s] = self.stats[s].usage.as_dict()
            total.add(self.stats[s].usage)
        out["total"] = total.as_dict()
        return out

    def dropped(self) -> dict[str, int]:
        """Everything lost, by reason, over the three steps: whole answers, then items."""
        c: Counter = Counter()
        for s in STEPS:
            c.update({k: v for k, v in self.stats[s].answers.items() if k != "ok"})
            c.update(self.stats[s].dropped)
        return {k: c.get(k, 0) for k in (*ANSWER_OUTCOMES[1:], *DROP_REASONS)}

    def reconciliation(self, predicted: int) -> dict[str, bool]:
        r, h, f = (self.stats[s] for s in STEPS)
        return {"steps": all(self.stats[s].reconciled for s in STEPS),
                "heads_requests_eq_relations_kept": h.requests == r.kept,
                "tails_requests_eq_heads_kept": f.requests == h.kept,
                "predicted_eq_tails_kept": predicted == f.kept}


def run_rhf(backend: LLMBackend, docs: Sequence[Document], labels: Sequence[str], cfg: RHFConfig,
            prompt: RHFPrompt | None = None) -> RHFRun:
    """R, H and F over ``docs`` in batches of ``cfg.batch_size`` documents; each step of a batch
    is one ``backend.generate`` call."""
    prompt = prompt or get_rhf_prompt(cfg.prompt.id, cfg.prompt.version)
    stats = {s: StepStats() for s in STEPS}
    preds: list[list[TripletRow]] = []
    run = RHFRun(preds, stats, 0.0)
    start = time.perf_counter()
    n_batches = (len(docs) + cfg.batch_size - 1) // cfg.batch_size
    for b0 in range(0, len(docs), cfg.batch_size):
        batch = RHFBatch(docs[b0:b0 + cfg.batch_size], labels, cfg, prompt)
        run.chunks += len(batch.units)
        run.truncated_docs += batch.truncated_docs
        for step in STEPS:
            t0 = time.perf_counter()
            requests = batch.requests(step)
            batch.take(step, backend.generate(requests) if requests else [])
            batch.stats[step].seconds = time.perf_counter() - t0
        for s in STEPS:
            stats[s].merge(batch.stats[s])
        preds.extend(batch.predictions())
        run.batches += 1
        logger.info("RHF batch %d/%d: %d docs, requests R/H/F %d/%d/%d, %d facts so far, %.1fs", run.batches,
                    n_batches, len(batch.docs), *(batch.stats[s].requests for s in STEPS),
                    sum(len(p) for p in preds), time.perf_counter() - start)
    run.seconds = time.perf_counter() - start
    return run


def score_run(docs: list[Document], run: RHFRun, train_facts: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """GLiDRE's metric on the run's predictions, plus the LLM accounting."""
    from glidre_core.evaluation import prediction_facts
    from glidre_core.metrics import evaluate_facts

    result = evaluate_facts(docs, prediction_facts(docs, run.predictions), train_facts)
    checks = run.reconciliation(result["predicted"])
    result.update({
        "docs": len(docs),
        "seconds": run.seconds,
        "docs_per_second": len(docs) / run.seconds if run.seconds else 0.0,
        "threshold": None,  # the LLM decides; there is no score threshold
        "usage": run.usage(),
        "dropped": run.dropped(),
        "steps": {s: run.stats[s].as_dict() for s in STEPS},
        "chunks": run.chunks,
        "truncated_docs": run.truncated_docs,
        "reconciliation": checks,
        "reconciled": all(checks.values()),
    })
    return result


def evaluate_llm(config_path: str | Path, data_path: str | Path, fmt: str, limit: int | None = None,
                 train_facts_path: str | Path | None = None) -> dict[str, Any]:
    """``glidre evaluate --model llm:CONFIG``: the metrics dict (see the module docstring)."""
    from glidre_core.evaluation import evaluation_labels
    from glidre_core.metrics import train_fact_names
    from glidre_core.readers import read_documents

    cfg = load_rhf_config(config_path)
    try:
        prompt = get_rhf_prompt(cfg.prompt.id, cfg.prompt.version)
    except KeyError as exc:
        raise RHFError(f"{config_path}: prompt: {exc.args[0]}") from None
    caps = [n for n in (limit, cfg.limits.max_docs) if n is not None]
    docs = read_documents(data_path, fmt, limit=min(caps) if caps else None)  # type: ignore[arg-type]
    if not docs:
        raise RHFError(f"{data_path}: no documents to evaluate")
    if not any(d.entities for d in docs):
        raise RHFError(f"{data_path}: the documents have no entities; the RHF baseline scores relations between "
                       "given entities (--format docred / glidre / conll04 / jsonl with entities)")
    labels = evaluation_labels(docs, fmt)
    facts = train_fact_names(read_documents(train_facts_path, fmt)) if train_facts_path else None  # type: ignore[arg-type]
    t0 = time.perf_counter()
    backend = build_rhf_backend(cfg)
    load_seconds = time.perf_counter() - t0
    try:
        run = run_rhf(backend, docs, labels, cfg, prompt)
        description = backend.describe()
    finally:
        backend.close()
    result = score_run(docs, run, facts)
    result.update({
        "labels": len(labels),
        "model": f"llm:{config_path}",
        "data": str(data_path),
        "llm": {"backend": description, "prompt": prompt.describe(), "config": str(config_path),
                "generation": cfg.generation.model_dump(), "limits": cfg.limits.model_dump(),
                "batch_size": cfg.batch_size, "load_seconds": load_seconds},
    })
    if not result["reconciled"]:
        logger.error("the RHF counts do not reconcile: %s", result["reconciliation"])
    return result


def summary_text(result: dict[str, Any]) -> str:
    """The table ``glidre evaluate`` prints for a GLiDRE model, with the LLM's accounting."""
    from glidre_core.metrics import summary_rows

    u = result["usage"]
    steps = result["steps"]
    lines = [
        f"docs {result['docs']}  ({result['docs_per_second']:.3f} docs/s, {result['seconds']:.1f}s)  "
        f"LLM {result['llm']['backend'].get('name')}  prompt {result['llm']['prompt']['key']}",
        f"{'':12s} {'P':>7s} {'R':>7s} {'F1':>7s}",
    ]
    for name, p, r, f in summary_rows(result):
        lines.append(f"{name:12s} {100*p:7.2f} {100*r:7.2f} {100*f:7.2f}")
    lines.append("requests R/H/F " + "/".join(str(steps[s]["requests"]) for s in STEPS)
                 + f"  tokens {u['total']['total_tokens']} (prompt {u['total']['prompt_tokens']}, "
                 f"completion {u['total']['completion_tokens']})")
    dropped = {k: v for k, v in result["dropped"].items() if v}
    lines.append("dropped " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "nothing")
                 + f"  reconciled {result['reconciled']}")
    return "\n".join(lines)
