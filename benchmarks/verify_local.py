"""One ``glidre extract`` run with the verify stage on, with the offline Gemma-3 270M as the LLM:
what the stage costs on this machine (a code-path measurement, not a quality one).

    nice -n 15 python benchmarks/verify_local.py --docs 10 --max-pairs-per-doc 8 \
        --output-json benchmarks/results/verify_local.json

The GLiDRE side is the embedded default model on the first ``--docs`` documents of
``data/sample/docs.jsonl`` (given entities, Re-DocRED labels, the model's dev-chosen threshold);
the verify band is ``--margin`` around it on both sides; the LLM is the in-process
``transformers`` backend inside the Ray actor, ``verify-yn-fewshot@v1`` (the prompt for base
models). The output JSON is the manifest's ``verify`` section as written, plus the wall time of
the whole run (Ray start, model loads, write and manifest included), the command and the load
of the machine. A base 270M model's answers say nothing about whether a triplet is right.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--margin", type=float, default=0.1, help="margin_below = margin_above")
    ap.add_argument("--max-pairs-per-doc", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-context-chars", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=4, help="documents per actor call (one generate call each)")
    ap.add_argument("--llm-batch-size", type=int, default=8, help="sequences per in-process generate() batch")
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from glidre_core.extraction import load_extract_config, run_extraction

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        lines = (REPO / "data" / "sample" / "docs.jsonl").read_text(encoding="utf-8").splitlines()[: args.docs]
        corpus = Path(tmp) / "in" / "docs.jsonl"
        corpus.parent.mkdir(parents=True)
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        overrides = [
            f"input={corpus}", f"output={Path(tmp) / 'out'}", "model=default", "labels=redocred",
            "entity_recognizer=model", f"batch_size={args.batch_size}", "ray.address=local", "progress_interval_s=30",
            f"verify={{enabled: true, margin_below: {args.margin}, margin_above: {args.margin}, "
            f"backend: {{kind: transformers, model: gemma-3-270m, batch_size: {args.llm_batch_size}, torch_threads: 1}}, "
            f"prompt: {{id: verify-yn-fewshot, version: 1}}, max_tokens: {args.max_tokens}, "
            f"max_pairs_per_doc: {args.max_pairs_per_doc}, max_context_chars: {args.max_context_chars}}}",
        ]
        cfg = load_extract_config(REPO / "configs" / "extract.yaml", overrides)
        t0 = time.perf_counter()
        manifest = run_extraction(cfg)
        wall = time.perf_counter() - t0
    result = {
        "command": "benchmarks/verify_local.py " + " ".join(sys.argv[1:]),
        "what": "glidre extract with verify.enabled on the first N sample documents: the default GLiDRE model, "
                "the in-process Gemma-3 270M (base) as the verifier; a code-path and cost measurement, not quality",
        "docs": manifest["docs_read"],
        "wall_seconds": round(wall, 2),
        "extraction_duration_s": manifest["duration_s"],
        "threshold": manifest["threshold"],
        "labels": len(manifest["labels"]),
        "triplets_written": manifest["triplets_written"],
        "verify": manifest["verify"],
        "machine": {"logical_cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": [round(x, 2) for x in load_start],
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared with a training run and other jobs: wall times measure them too"},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(text + "\n")


if __name__ == "__main__":
    main()
