#!/usr/bin/env python
"""Host time of building batches: ``GLiDRE.collate`` (inference) and ``targets.training_batch``
(collate + relation and span targets), per batch, on the CPU; and of decoding a batch's
probabilities into rows (``Predictor.decode_relations`` with the embedded default model, whose
stored thresholds give realistic row counts; the forward pass is run once, untimed).

Why it matters: on a GPU the encoder of a 32-document MiniLM batch is a few milliseconds of
kernels, and the host builds the next batch meanwhile; when building it takes longer, the device
waits (issue 10). The forward pass is not timed here (``model_benchmark.py`` does that).

    python benchmarks/collate_benchmark.py --docs 256 --reps 5 --out-json benchmarks/results/collate_benchmark.json

Documents are the first ``--docs`` Re-DocRED test documents, prepared once; batches are grouped
as ``Predictor.batches`` groups them (inference) and in file order (training: the corpus's relation labels and entity types). Each document's first batching fills its cached
window layout and gold spans; the warm-up pass does that, so the timed passes measure the steady
state of an epoch loop or a long extraction job (first-touch cost: the ``cold`` numbers).
To compare two commits, run the script in each checkout back to back, or run this script against
the other commit's library: ``PYTHONPATH=<other checkout> python benchmarks/collate_benchmark.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def cpu_flags() -> dict[str, bool]:
    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "redocred" / "test_revised.json"))
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32, help="inference batch size")
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out-json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    import glidre_core
    from glidre_core.model_loading import load_model
    from glidre_core.modeling.targets import training_batch
    from glidre_core.readers import read_documents, relation_labels

    model = load_model("default", device="cpu")
    model.eval()
    docs = read_documents(args.data, "docred", limit=args.docs)
    predictor = model.predictor(batch_size=args.batch_size)
    labels = relation_labels(docs)
    types = sorted({e.type for d in docs for e in d.entities if e.type}) if model.span_head is not None else None

    def timed(fn) -> dict[str, float]:
        prepared = predictor.prepare(docs)  # fresh documents: the first pass is cold
        t0 = time.perf_counter()
        n = fn(prepared)
        cold = (time.perf_counter() - t0) / n
        walls = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn(prepared)
            walls.append((time.perf_counter() - t0) / n)
        return {"batches": n, "cold_ms": 1e3 * cold, "median_ms": 1e3 * statistics.median(walls),
                "best_ms": 1e3 * min(walls)}

    def infer(prepared) -> int:
        groups = [[prepared[i] for i in idx] for idx in predictor.batches(prepared)]
        with torch.no_grad():
            for g in groups:
                model.collate(g)
        return len(groups)

    def train(prepared) -> int:
        bs = args.train_batch_size
        groups = [prepared[s : s + bs] for s in range(0, len(prepared), bs)]
        for g in groups:
            training_batch(model, g, labels, types)
        return len(groups)

    def decode(scores) -> int:
        """Decoding as ``Predictor.predict`` does it on the host, per batch of ``batch_size``
        documents: the selection above the stored thresholds and the rows."""
        for sc in scores:
            predictor.decode_relations(sc)
        return -(-len(scores) // args.batch_size)

    def timed_decode() -> dict[str, float]:
        scores = predictor.score_relations(predictor.prepare(docs))  # the forward pass, untimed
        walls = []
        for _ in range(args.reps + 1):  # the first pass warms up
            t0 = time.perf_counter()
            n = decode(scores)
            walls.append((time.perf_counter() - t0) / n)
        rows = sum(len(predictor.decode_relations(sc)) for sc in scores)
        return {"batches": n, "rows_per_doc": rows / len(scores),
                "median_ms": 1e3 * statistics.median(walls[1:]), "best_ms": 1e3 * min(walls[1:])}

    library = Path(glidre_core.__file__).resolve().parent.parent
    res = {
        "command": "python " + " ".join(["benchmarks/collate_benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        # the commit of the library that was measured (it may come from another checkout)
        "library": str(library),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=library, capture_output=True,
                                 text=True).stdout.strip() or None,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), **cpu_flags(),
                    "torch": torch.__version__, "torch_threads": 1},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "docs": len(docs),
        "collate": {"batch_size": args.batch_size, **timed(infer)},
        "training_batch": {"batch_size": args.train_batch_size, "labels": len(labels or []),
                           "entity_types": len(types or []), **timed(train)},
        "decode": {"batch_size": args.batch_size, "model": "default", **timed_decode()},
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
