"""Distillation throughput with the in-process backend on CPU, and a projected GPU (vLLM) cost.

    nice -n 15 python benchmarks/distill_throughput.py --docs 4 --max-tokens 256 \
        --gold ../shared/data/redocred/dev_revised.json \
        --output-json benchmarks/results/distill_throughput.json

What is measured (on this machine, with the base Gemma-3 270M from the [llm-local] extra):

1. ``in_process``: the teacher of the distill job (``LLMTeacher`` over ``TransformersBackend``)
   on the first ``--docs`` documents of ``data/sample/raw.jsonl``, model loaded beforehand, one
   ``generate`` call per batch: documents/s and tokens/s (prompt, completion, total), from the
   tokenizer's own counts.
2. ``job`` (unless ``--skip-job``): the whole ``glidre distill`` Ray Data job on the same
   documents (Ray start, the actor loading the cached model, the write and the manifest
   included): documents/s and tokens/s from its manifest.
3. ``tokens_per_document``: prompt tokens of the kg-json@v1 prompt for every sample document
   (tokenizer only), and, as the size of a *good* answer, the gold annotation of ``--gold``
   documents (Re-DocRED) written in the answer format the prompt asks for. Gemma's own answers
   are not a measure of answer length: a base 270M model rambles or stops early.

What is projected, not measured: the GPU cost per 1,000 documents with vLLM, from the token
counts above and the assumptions written into the output next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from glidre_core.llm.config import TransformersBackendConfig, load_distill_config  # noqa: E402
from glidre_core.llm.distill import DistillSettings, LLMTeacher, parse_input  # noqa: E402
from glidre_core.llm.prompts import get_prompt  # noqa: E402

logger = logging.getLogger("distill_throughput")

#: Projection assumptions (vLLM, one 7-8B instruct model in bf16 per H100 80GB; aggregate
#: throughput at high concurrency; ranges, not measurements).
ASSUMPTIONS = {
    "model": "a 7-8B instruct model (e.g. Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct), bf16, 1 GPU per replica",
    "gpu": "NVIDIA H100 80GB (an H200 or A100 80GB is in the same range)",
    "decode_tokens_per_s": [2000, 4000],
    "prefill_tokens_per_s": [15000, 30000],
    "prefix_caching": "the instructions and example shared by every prompt are prefilled once",
    "usd_per_gpu_hour": [2.5, 4.0],
    "tokenizer": "counts are Gemma-3's tokenizer; a Qwen or Llama tokenizer counts English within about +-15%",
    "not_included": "Ray/vLLM start-up, model download, CPU stages, retries of bad answers",
}


def hardware() -> dict:
    import torch

    flags: list[str] = []
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return {
        "cpu": model, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "torch_default_threads": torch.get_num_threads(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
        "python": platform.python_version(), "load_average_at_start": list(os.getloadavg()),
        "note": "2 cores shared with other jobs (see load averages): absolute speeds are pessimistic",
    }


def read_docs(path: Path, n: int) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def gold_answers(path: Path, limit: int) -> list[str]:
    """Re-DocRED documents' gold annotation as the JSON answer the prompt asks for."""
    from glidre_core.readers import read_documents

    out = []
    for doc in read_documents(path, "docred", limit=limit):
        names = {e.id: doc.entity_text(e) for e in doc.entities}
        answer = {
            "entities": [{"name": names[e.id], "type": e.type,
                          "mentions": sorted({doc.mention_text(m) for m in e.mentions})} for e in doc.entities],
            "relations": [{"head": names[r.head], "relation": r.label, "tail": names[r.tail]} for r in doc.relations],
        }
        out.append(json.dumps(answer, ensure_ascii=False))
    return out


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure_in_process(teacher: LLMTeacher, docs: list, batch_size: int) -> dict:
    """Wall-clock rates, and rates per CPU-second of this process: on a shared machine the
    wall clock measures the other jobs too; CPU time measures the work."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    rows = []
    for s in range(0, len(docs), batch_size):
        rows.extend(teacher.annotate(docs[s : s + batch_size]))
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    prompt = sum(r["prompt_tokens"] for r in rows)
    completion = sum(r["completion_tokens"] for r in rows)
    return {
        "docs": len(rows), "seconds": round(seconds, 2), "docs_per_second": len(rows) / seconds,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "tokens_per_second": (prompt + completion) / seconds, "completion_tokens_per_second": completion / seconds,
        "cpu_seconds": round(cpu, 2), "docs_per_cpu_second": len(rows) / cpu,
        "tokens_per_cpu_second": (prompt + completion) / cpu, "completion_tokens_per_cpu_second": completion / cpu,
        "docs_ok": sum(r["status"] == "ok" for r in rows),
        "errors": [r["error_type"] for r in rows if r["status"] != "ok"],
    }


def projection(prompt_per_doc: float, shared_prefix: int, completion_per_doc: float) -> dict:
    """GPU-hours and USD per 1,000 documents, best and worst case of :data:`ASSUMPTIONS`."""
    fresh_prompt = max(0.0, prompt_per_doc - shared_prefix)
    out = {}
    for case, i, j in (("optimistic", 1, 0), ("pessimistic", 0, 1)):
        decode, prefill = ASSUMPTIONS["decode_tokens_per_s"][i], ASSUMPTIONS["prefill_tokens_per_s"][i]
        price = ASSUMPTIONS["usd_per_gpu_hour"][j]
        seconds = 1000 * (fresh_prompt / prefill + completion_per_doc / decode)
        out[case] = {"gpu_seconds": round(seconds, 1), "gpu_hours": round(seconds / 3600, 4),
                     "usd": round(seconds / 3600 * price, 4)}
    return {"label": "PROJECTION from measured token counts and assumed vLLM throughput; not measured on a GPU",
            "per_1000_documents": out, "prompt_tokens_per_doc": round(prompt_per_doc, 1),
            "shared_prefix_tokens": shared_prefix, "fresh_prompt_tokens_per_doc": round(fresh_prompt, 1),
            "completion_tokens_per_doc": round(completion_per_doc, 1), "assumptions": ASSUMPTIONS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(REPO / "data" / "sample" / "raw.jsonl"))
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--prompt", default="kg-json-fewshot", help="prompt of the measured runs (the base model's)")
    ap.add_argument("--projection-prompt", default="kg-json", help="prompt of an instruction-tuned teacher")
    ap.add_argument("--gold", default=str(REPO.parent / "shared" / "data" / "redocred" / "dev_revised.json"))
    ap.add_argument("--gold-docs", type=int, default=200)
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--output-json", default=str(REPO / "benchmarks" / "results" / "distill_throughput.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    result: dict = {"command": " ".join(sys.argv), "hardware": hardware()}

    teacher_cfg = TransformersBackendConfig(batch_size=args.batch_size, torch_threads=args.torch_threads)
    cfg = load_distill_config(None, [f"input={args.input}", "output=/unused", f"generation.max_tokens={args.max_tokens}",
                                     f"prompt.id={args.prompt}"])
    cfg = cfg.model_copy(update={"teacher": teacher_cfg})
    settings = DistillSettings.from_config(cfg, "transformers:gemma-3-270m")
    from glidre_core.llm.local import TransformersBackend

    t0 = time.perf_counter()
    backend = TransformersBackend(teacher_cfg)
    result["model_load_seconds"] = round(time.perf_counter() - t0, 2)
    raw = read_docs(Path(args.input), args.docs)
    docs = [parse_input("raw.jsonl", i + 1, json.dumps(d).encode(), settings) for i, d in enumerate(raw)]
    teacher = LLMTeacher(backend, settings)
    result["in_process"] = {"prompt": get_prompt(args.prompt, 1).key, "max_tokens": args.max_tokens,
                            "batch_size": args.batch_size, "torch_threads": args.torch_threads,
                            **measure_in_process(teacher, docs, args.batch_size)}
    logger.info("in process: %s", result["in_process"])

    # tokens per document, for the prompt of an instruction-tuned teacher (the projection's):
    # the prompt for every sample document; a good answer's size from gold annotations
    proj_settings = DistillSettings.from_config(
        cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"id": args.projection_prompt})}), "projection")
    proj_teacher = LLMTeacher(backend, proj_settings)
    all_docs = read_docs(Path(args.input), 10**9)
    prompt_tokens = [len(backend.tokenizer(backend.render(r))["input_ids"]) for d in all_docs
                     for r in proj_teacher.requests(parse_input("raw.jsonl", 1, json.dumps(d).encode(), proj_settings))]
    empty = proj_teacher.requests(parse_input("x", 1, b'{"doc_id": "x", "text": "x"}', proj_settings))[0]
    shared = len(backend.tokenizer(backend.render(empty))["input_ids"]) - 1
    tokens = {"sample_documents": len(all_docs), "prompt": get_prompt(args.projection_prompt, 1).key,
              "chunks": len(prompt_tokens), "prompt_tokens_per_doc": sum(prompt_tokens) / len(all_docs),
              "shared_prefix_tokens": shared}
    gold = Path(args.gold)
    if gold.exists():
        answers = gold_answers(gold, args.gold_docs)
        counts = [backend.count_tokens(a) for a in answers]
        tokens.update({"gold_source": str(gold.name), "gold_documents": len(counts),
                       "gold_answer_tokens_per_doc": sum(counts) / len(counts),
                       "gold_answer_tokens_max": max(counts)})
        completion = tokens["gold_answer_tokens_per_doc"]
    else:
        logger.warning("no gold file at %s: the projection uses max_tokens as the answer size", gold)
        completion = float(args.max_tokens)
    result["tokens_per_document"] = tokens
    result["projection_vllm_gpu"] = projection(tokens["prompt_tokens_per_doc"], shared, completion)
    backend.close()
    del backend

    if not args.skip_job:
        from glidre_core.llm.distill import run_distill

        with tempfile.TemporaryDirectory() as tmp:
            inp = Path(tmp) / "in" / "raw.jsonl"
            inp.parent.mkdir()
            inp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in raw))
            job_cfg = cfg.model_copy(update={"input": str(inp), "output": str(Path(tmp) / "out"),
                                             "batch_size": args.batch_size})
            manifest = run_distill(job_cfg)
        result["job"] = {k: manifest[k] for k in ("docs_read", "docs_written", "docs_errored", "errors_by_type",
                                                   "duration_s", "tokens", "throughput", "reconciled")}
        logger.info("job: %s", result["job"])
    result["hardware"]["load_average_at_end"] = list(os.getloadavg())
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
