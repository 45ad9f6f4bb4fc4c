"""Ray Data's LLM processor (``ray.data.llm``, vLLM engine) as the teacher, for GPU clusters.

Optional: the ``glidre-core[llm]`` extra installs ``ray[llm]==2.60.0``, which brings the vLLM
release Ray 2.60 was built against (and a CUDA torch: install it on the GPU images, not next to
the CPU pin of the core install). Nothing in the core imports vLLM.

Offline validation (what CI can do without vLLM or a GPU): Ray 2.60's config classes import
without vLLM, so :func:`processor_config` builds the *real* ``vLLMEngineProcessorConfig`` from
our :class:`~glidre_core.llm.config.RayVLLMBackendConfig` (one field per field: a renamed or
removed Ray field fails there), and :func:`build_distill_processor` builds the real
``Processor`` (its stages and their ``map_batches`` arguments) from a local model directory.
Only running it needs vLLM and GPUs.

How the distill job uses it (``glidre_core.llm.distill``): one row per document *chunk*
(:func:`chunk_rows`) goes through the processor (chat template, tokenize, vLLM, detokenize),
then the chunks of each document are grouped back by their input record (``groupby(key)``)
and :func:`merge_chunk_rows` parses, validates and merges them exactly like the in-process
path. An input record that is not a usable document still travels as a one-token request (so
one plan serves every row; such rows are rare) and becomes its ``InputError`` row at the merge.

Cluster recipe (see README, "LLM stage: distill"): GPU workers with 24 GB or more (L4, A10G,
L40S, A100, H100); one vLLM replica per GPU for a 7-8B instruct model in bf16
(``concurrency`` = number of GPUs, ``engine_kwargs.max_model_len`` 8192), or
``engine_kwargs.tensor_parallel_size`` GPUs per replica for larger models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from glidre_core.llm.base import BackendError
from glidre_core.llm.config import GenerationConfig, RayVLLMBackendConfig

#: fields carried through the processor for each chunk row
#: (``block``, ``block_size``, ``block_last``: the record's input unit, which the sink's ledger
#: records so that ``--resume`` can skip it; see glidre_core.extraction.state)
CHUNK_COLUMNS = ("key", "doc_id", "source", "line", "text", "chunk", "n_chunks", "chunk_start", "chunk_end",
                 "input_error", "input_field", "block", "block_size", "block_last")


def processor_config(cfg: RayVLLMBackendConfig) -> Any:
    """The real ``ray.data.llm.vLLMEngineProcessorConfig`` for ``cfg`` (no vLLM needed)."""
    try:
        from ray.data.llm import vLLMEngineProcessorConfig
    except ImportError as exc:  # ray without its llm module
        raise BackendError(f"ray.data.llm is not available ({exc}): install glidre-core[llm]") from exc
    kwargs = cfg.model_dump(exclude={"kind", "apply_chat_template"})
    kwargs["chat_template_stage"] = cfg.apply_chat_template
    return vLLMEngineProcessorConfig(**{k: v for k, v in kwargs.items() if v is not None})


def sampling_params(gen: GenerationConfig, max_tokens: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": max_tokens or gen.max_tokens, "temperature": gen.temperature}
    if gen.stop:
        params["stop"] = list(gen.stop)
    return params


def chunk_rows(records: Sequence[dict[str, Any]], render: Any, gen: GenerationConfig) -> list[dict[str, Any]]:
    """Processor input rows: one per chunk of each prepared record (``render(chunk_text) ->
    messages``); a record with an input error gets one placeholder row (one-token request)."""
    rows = []
    for rec in records:
        base = {k: rec.get(k) for k in CHUNK_COLUMNS if k not in ("chunk", "chunk_start", "chunk_end", "n_chunks")}
        if rec.get("input_error"):
            rows.append({**base, "chunk": 0, "n_chunks": 1, "chunk_start": 0, "chunk_end": 0,
                         "messages": [{"role": "user", "content": "."}],
                         "sampling_params": sampling_params(gen, 1)})
            continue
        spans = rec["spans"]
        for i, (s, e) in enumerate(spans):
            rows.append({**base, "chunk": i, "n_chunks": len(spans), "chunk_start": s, "chunk_end": e,
                         "messages": [dict(m) for m in render(rec["text"][s:e])],
                         "sampling_params": sampling_params(gen)})
    return rows


def postprocess_row(row: dict[str, Any]) -> dict[str, Any]:
    """Keep the carried columns and the engine's answer and token counts."""
    out = {k: row.get(k) for k in CHUNK_COLUMNS}
    out["generated_text"] = row.get("generated_text") or ""
    out["num_input_tokens"] = int(row.get("num_input_tokens") or 0)
    out["num_generated_tokens"] = int(row.get("num_generated_tokens") or 0)
    out["inference_error"] = ""
    return out


def build_distill_processor(cfg: RayVLLMBackendConfig) -> Any:
    """The real Ray Data LLM ``Processor`` over chunk rows (built offline; runs only with vLLM)."""
    from ray.data.llm import build_processor

    return build_processor(
        processor_config(cfg),
        preprocess=lambda row: {**row, "messages": list(row["messages"]), "sampling_params": dict(row["sampling_params"])},
        postprocess=postprocess_row,
    )


def merge_chunk_rows(rows: Sequence[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """The processor's rows of one input record -> one distill result row (see
    :func:`glidre_core.llm.distill.result_from_chunks`). Error rows of the processor carry
    ``__inference_error__`` and become ``BackendFailure``."""
    from glidre_core.llm.base import Completion, Usage
    from glidre_core.llm.distill import DocInput, result_from_chunks, input_error_row

    rows = sorted(rows, key=lambda r: int(r.get("chunk") or 0))
    first = rows[0]
    doc = DocInput(key=first["key"], doc_id=first["doc_id"], text=first.get("text") or "", source=first["source"],
                   line=first.get("line"), spans=[(int(r["chunk_start"]), int(r["chunk_end"])) for r in rows],
                   block=first.get("block"), block_size=first.get("block_size"), block_last=first.get("block_last"))
    if first.get("input_error"):
        return input_error_row(doc, first.get("input_field") or "<root>", first["input_error"], settings)
    completions = []
    for r in rows:
        err = r.get("__inference_error__") or r.get("inference_error") or None
        completions.append(Completion(f"{doc.key}#{r.get('chunk')}", text=r.get("generated_text") or "",
                                      usage=Usage(int(r.get("num_input_tokens") or 0),
                                                  int(r.get("num_generated_tokens") or 0)),
                                      finish_reason="error" if err else "stop", error=err))
    return result_from_chunks(doc, completions, settings)


def describe(cfg: RayVLLMBackendConfig) -> dict[str, Any]:
    return {"name": f"ray_vllm:{cfg.model_source}", "kind": "ray_vllm",
            **json.loads(json.dumps(cfg.model_dump(exclude={"kind"}), default=str))}
