"""Throughput of the Ray Data extraction job against the encoder ceiling, and how cost scales.

Three measurements, all on this machine, written to one JSON file and printed as Markdown:

1. **Encoder ceiling**: the document encoder's plain forward pass (Hugging Face model, SDPA, no
   attention outputs, no pair scoring, no labels) over the same documents' windows, batched as the
   job batches them, tokenization excluded. docs/s after one warm-up batch.
2. **End-to-end job**: :func:`glidre_core.extraction.run_extraction` (read -> validate/tokenize ->
   model actors -> Parquet) over the same documents, once per actor count in ``--actors``.
   *Steady-state* docs/s is measured after every actor has finished its first batch (actor start-up
   and model loading excluded), from the job's progress tracker; the ratio to the ceiling is the
   number the issue's target (>= 0.85) refers to. Overall docs/s (wall clock, start-up included) is
   reported too.
3. **Scaling**: synthetic documents of growing length (words) and entity count, each setting in a
   fresh subprocess running the actor's own code path (prepare + score + decode): seconds per
   document and the peak resident memory above the loaded model.

Usage (full size, as in the README)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/extraction_throughput.py \\
        --docred /work/shared/data/docred/test.json --num-docs 300 --model default --labels redocred \\
        --actors 1,2 --output-json benchmarks/results/extraction_throughput.json

Quick validation on the bundled sample: ``--input data/sample/docs.jsonl --num-docs 16 --actors 1
--scaling-words 128,256 --scaling-entities 4,8 --scaling-docs 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("benchmark")


# -- corpus --------------------------------------------------------------------------------------
def load_corpus(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``num_docs`` input records (JSON Lines or converted DocRED), repeated with new ids if short."""
    if args.docred:
        from glidre_core.readers import docred_to_document, load_rel_info

        info = load_rel_info()
        raw = json.loads(Path(args.docred).read_text(encoding="utf-8"))
        base = []
        for i, r in enumerate(raw[: args.num_docs]):
            d = docred_to_document(r, f"docred-{i}", info)
            base.append({"doc_id": d.doc_id, "title": d.title, "text": d.text, "entities": [
                {"id": e.id, "type": e.type, "mentions": [{"start": m.start, "end": m.end} for m in e.mentions]}
                for e in d.entities]})
    else:
        base = [json.loads(line) for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for i in range(args.num_docs):
        rec = dict(base[i % len(base)])
        rec["doc_id"] = f"{rec['doc_id']}#{i // len(base)}" if i >= len(base) else rec["doc_id"]
        out.append(rec)
    return out


# -- 1. encoder ceiling --------------------------------------------------------------------------------
def encoder_ceiling(model: Any, records: list[dict[str, Any]], batch_size: int, threads: int) -> dict[str, Any]:
    """The bare HF encoder on the padded windows of the batches the job's actors build (documents
    grouped ``batch_size`` at a time in input order, each group collated as ``Predictor`` does),
    in the precision the model's own encoder runs in."""
    import torch

    from glidre_core.documents import parse_document
    from glidre_core.modeling.precision import encoder_dtype

    torch.set_num_threads(threads)
    device = model.device
    prepared = [model.prepare(parse_document(r)) for r in records]
    predictor = model.predictor(relation_labels=["x"], batch_size=batch_size)
    groups = [prepared[i : i + batch_size] for i in range(0, len(prepared), batch_size)]
    dtype = encoder_dtype(model.config.encoder_precision, device)
    # the HF module GLiDRE's encoder runs at inference (in bf16 a cast copy, no autocast)
    with torch.inference_mode():
        bare = model.eval().inference_encoder(device).model
    inputs = []
    with torch.inference_mode():
        for group in groups:
            # one group of the job is one Predictor call: its documents sorted as Predictor.batches does
            order = [i for idx in predictor.batches(group) for i in idx]
            batch, _ = model.collate([group[i] for i in order])
            inputs.append((batch.input_ids, batch.key_mask.long()))
    sizes = [len(g) for g in groups]
    times = []
    with torch.inference_mode():
        for ids, mask in inputs:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            bare(input_ids=ids, attention_mask=mask)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    steady_docs, steady_t = sum(sizes[1:]), sum(times[1:])
    return {
        "threads": threads, "batch_size": batch_size, "docs": len(records),
        "windows": sum(len(p.tokens.windows) for p in prepared),
        "encoder_dtype": str(dtype).replace("torch.", ""),
        "docs_per_second": steady_docs / steady_t if steady_t > 0 else len(records) / sum(times),
        "seconds": sum(times),
    }


# -- 2. the job -----------------------------------------------------------------------------------------
def run_job(corpus: Path, out_dir: Path, args: argparse.Namespace, actors: int, cores: int) -> dict[str, Any]:
    from glidre_core.extraction import load_extract_config, run_extraction

    threads = max(1, cores // actors)
    values = {
        "input": str(corpus), "output": str(out_dir), "model": args.model, "labels": args.labels,
        "batch_size": args.batch_size, "overwrite": True, "progress_interval_s": 5,
        "actors.min_size": actors, "actors.max_size": actors, "actors.num_cpus": cores / actors,
        "actors.torch_threads": threads, "lines_per_block": max(8, args.batch_size * 2),
        "docs_per_file": max(64, args.batch_size * 8),
        **dict(kv.split("=", 1) for kv in args.job_set),
    }
    manifest = run_extraction(load_extract_config(None, values=values))
    tp = manifest["throughput"]
    return {
        "actors": actors, "torch_threads_per_actor": threads, "docs": manifest["docs_read"],
        "docs_failed": manifest["docs_failed"], "triplets": manifest["triplets_written"],
        "wall_seconds": manifest["duration_s"], "overall_docs_per_second": tp["docs_per_second"],
        "steady_docs_per_second": tp["steady_docs_per_second"], "steady_docs": tp["steady_docs"],
        "steady_seconds": tp["steady_seconds"], "reconciled": manifest["reconciled"],
    }


# -- 3. scaling (one subprocess per setting) -------------------------------------------------------------------
def synthetic_docs(base: list[dict[str, Any]], words: int, entities: int, n: int, seed: int = 0) -> list[dict]:
    """Documents of exactly ``words`` words (sample text repeated) with ``entities`` one-word entities,
    each mentioned twice when the text allows, spread over the whole document."""
    from glidre_core.text import split_words

    rng = random.Random(seed)
    pool = " ".join(r["text"] for r in base)
    w = split_words(pool)
    docs = []
    for k in range(n):
        start = rng.randrange(0, max(1, len(w) - words))
        idx = [(start + i) % len(w) for i in range(words)]
        text = " ".join(w.tokens[i] for i in idx)
        ww = split_words(text)
        slots = sorted(rng.sample(range(len(ww)), min(len(ww), 2 * entities)))
        rng.shuffle(slots)
        ents = []
        for e in range(entities):
            ms = slots[e::entities][:2] or [slots[e % len(slots)]]
            ents.append({"id": str(e), "type": "MISC",
                         "mentions": [{"start": ww.starts[s], "end": ww.ends[s]} for s in sorted(set(ms))]})
        docs.append({"doc_id": f"syn-{words}-{entities}-{k}", "text": text, "entities": ents})
    return docs


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so model loading does not count as the peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: the actor's code path on synthetic documents."""
    import torch

    from glidre_core.documents import parse_document
    from glidre_core.extraction.labels import resolve_labels
    from glidre_core.extraction.udf import load_model_ref

    torch.set_num_threads(spec["threads"])
    model = load_model_ref(spec["model"])
    labels = resolve_labels(spec["labels"], model.config.labels)
    # the actor's code path: one Predictor (labels embedded and thresholds resolved once), then
    # prepare + Predictor.predict (score + decode) per document
    predictor = model.predictor(relation_labels=labels, batch_size=1)
    _ = predictor.relations
    base = [json.loads(x) for x in spec["base"]]
    docs = [parse_document(d) for d in synthetic_docs(base, spec["words"], spec["entities"], spec["docs"] + 1)]
    with torch.inference_mode():
        predictor.predict([model.prepare(docs[0])])  # warm-up
        rss0 = _status_mb("VmRSS")
        reset = _reset_peak_rss()
        t0 = time.perf_counter()
        for d in docs[1:]:
            predictor.predict([model.prepare(d)])
        seconds = (time.perf_counter() - t0) / spec["docs"]
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"words": spec["words"], "entities": spec["entities"], "pairs": spec["entities"] * (spec["entities"] - 1),
            "seconds_per_doc": seconds, "peak_rss_mb": peak, "rss_after_load_mb": rss0,
            "peak_above_loaded_mb": max(0.0, peak - rss0)}


def scaling(args: argparse.Namespace, base: list[dict[str, Any]], threads: int) -> list[dict[str, Any]]:
    settings = [(w, args.scaling_fixed_entities) for w in args.scaling_words]
    settings += [(args.scaling_fixed_words, e) for e in args.scaling_entities
                 if (args.scaling_fixed_words, e) not in settings]
    rows = []
    for words, entities in settings:
        spec = {"model": args.model, "labels": args.labels, "words": words, "entities": entities,
                "docs": args.scaling_docs, "threads": threads, "base": [json.dumps(b) for b in base[:20]]}
        proc = subprocess.run([sys.executable, __file__, "--_measure", json.dumps(spec)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        if proc.returncode != 0:
            raise RuntimeError(f"scaling run {words} words / {entities} entities failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        logger.info("scaling %s", rows[-1])
    return rows


# -- report ---------------------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    c = result["encoder_ceiling"]
    lines = [f"Machine: {result['machine']['cpus']} CPUs ({result['machine']['processor']}), "
             f"model `{result['model']}`, {result['docs']} documents, batch {result['batch_size']}.", "",
             "| run | actors x threads | docs/s (steady) | docs/s (overall) | steady / encoder ceiling |",
             "|---|---|---|---|---|",
             f"| encoder forward only (ceiling; mean of before {c.get('before_docs_per_second', c['docs_per_second']):.2f} "
             f"and after {c.get('after_docs_per_second', c['docs_per_second']):.2f}) | 1 x {c['threads']} | "
             f"{c['docs_per_second']:.2f} | - | 1.00 |"]
    for j in result["jobs"]:
        steady = j["steady_docs_per_second"]
        lines.append(f"| Ray Data job | {j['actors']} x {j['torch_threads_per_actor']} | "
                     f"{steady:.2f} | {j['overall_docs_per_second']:.2f} | "
                     f"{steady / c['docs_per_second']:.2f} |" if steady else
                     f"| Ray Data job | {j['actors']} x {j['torch_threads_per_actor']} | n/a (too few batches) | "
                     f"{j['overall_docs_per_second']:.2f} | - |")
    if result.get("scaling"):
        lines += ["", "| words | entities | ordered pairs | s / doc | peak RSS above loaded model (MB) |",
                  "|---|---|---|---|---|"]
        for r in result["scaling"]:
            lines.append(f"| {r['words']} | {r['entities']} | {r['pairs']} | {r['seconds_per_doc']:.3f} | "
                         f"{r['peak_above_loaded_mb']:.0f} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", default="data/sample/docs.jsonl", help="JSON Lines corpus")
    src.add_argument("--docred", help="DocRED-format JSON array (e.g. the DocRED test set)")
    p.add_argument("--num-docs", type=int, default=200)
    p.add_argument("--model", default="default")
    p.add_argument("--labels", default="redocred")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--actors", type=_ints, default=[1, 2])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU cores to use (ceiling and job)")
    p.add_argument("--scaling-words", type=_ints, default=[128, 256, 512, 1024, 2048])
    p.add_argument("--scaling-entities", type=_ints, default=[5, 10, 20, 40, 80])
    p.add_argument("--scaling-fixed-words", type=int, default=512)
    p.add_argument("--scaling-fixed-entities", type=int, default=20)
    p.add_argument("--scaling-docs", type=int, default=3)
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--job-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra job config values, e.g. batch_size=16 (repeatable)")
    p.add_argument("--no-dashboard", action="store_true", help="start the benchmark's Ray without its dashboard")
    p.add_argument("--output-json", default="benchmarks/results/extraction_throughput.json")
    p.add_argument("--_measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._measure:
        print(json.dumps(measure_one(json.loads(args._measure))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    from glidre_core.extraction.udf import load_model_ref

    records = load_corpus(args)
    cores = args.threads
    model = load_model_ref(args.model)
    before = encoder_ceiling(model, records, args.batch_size, cores)
    logger.info("encoder ceiling (before the jobs): %.2f docs/s", before["docs_per_second"])
    jobs = []
    with tempfile.TemporaryDirectory(prefix="glidre-bench-") as tmp:
        corpus = Path(tmp) / "in" / "docs.jsonl"
        corpus.parent.mkdir()
        corpus.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
        # One extra logical CPU for reads / preprocessing so the actors can take every core.
        ray.init(address="local", num_cpus=cores + 1, log_to_driver=False,
                 include_dashboard=not args.no_dashboard)
        try:
            for n in args.actors:
                jobs.append(run_job(corpus, Path(tmp) / f"out{n}", args, n, cores))
                logger.info("job: %s", jobs[-1])
        finally:
            ray.shutdown()
    # The ceiling again after the jobs: the ratio uses the mean of both, so a slow drift of this
    # shared machine during the run does not favour either side.
    after = encoder_ceiling(model, records, args.batch_size, cores)
    logger.info("encoder ceiling (after the jobs): %.2f docs/s", after["docs_per_second"])
    del model
    ceiling = dict(before, docs_per_second=(before["docs_per_second"] + after["docs_per_second"]) / 2,
                   before_docs_per_second=before["docs_per_second"], after_docs_per_second=after["docs_per_second"],
                   seconds=before["seconds"] + after["seconds"])
    rows = [] if args.skip_scaling else scaling(args, records, cores)
    result = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "model": args.model, "labels": args.labels, "docs": len(records), "batch_size": args.batch_size,
        "encoder_ceiling": ceiling, "jobs": jobs, "scaling": rows, "dashboard": not args.no_dashboard,
        "command": "python benchmarks/extraction_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target": "steady-state job docs/s >= 0.85 x encoder ceiling",
    }
    out = Path(args.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
