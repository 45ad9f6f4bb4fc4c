"""Training throughput (documents/second) on Ray Train with 1 and 2 workers, against the bare
encoder forward+backward on the same documents; prints the overhead ratio.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/train_throughput.py \
        --config configs/finetune.yaml --docs 16 --steps 8 --workers 1 2 --output runs/bench/train_throughput.json

* ``bare``: the document encoder alone (all layers forward, backward through its trainable
  layers) on the training documents, batch by batch, no heads, no loss, no optimizer.
* ``in-process``: the training loop in this process (``scaling.num_workers: 0``).
* ``ray-N``: ``glidre_core.ray_train.train`` with N workers (DDP, gloo on CPU); docs/s is measured
  inside the loop (rank 0's documents per second of loop time, times N), so Ray start-up is
  excluded; the wall time including start-up is reported next to it.

overhead = bare docs/s / trainer docs/s (1.0 = the trainer costs nothing beyond the encoder;
the trainer also runs the pair heads and the optimizer, but caches frozen lower layers).
On a 2-core machine 2 workers share the cores, so more workers cannot be faster here.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from glidre_core.modeling import GLiDRE
from glidre_core.ray_train import train
from glidre_core.readers import read_documents
from glidre_core.training import TrainingConfig, load_training_config


def bare_encoder(cfg: TrainingConfig, n_docs: int, repeats: int) -> float:
    """docs/s of encoder forward+backward on the first ``n_docs`` training documents."""
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    docs = read_documents(cfg.train.path, cfg.train.format, on_error="skip", limit=n_docs)
    model = GLiDRE(cfg.model.model_copy(update={"labels": ["x"]}))
    model.train()
    prepared = [model.prepare(d) for d in docs]
    bs = cfg.batch_size

    def one_pass() -> None:
        for s in range(0, len(prepared), bs):
            batch = [p.tokens for p in prepared[s : s + bs]]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                encoded = model.encoder.encode(batch)
                loss = sum(e.word_vectors.float().mean() for e in encoded)
            loss.backward()
            model.zero_grad(set_to_none=True)

    one_pass()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    return repeats * len(prepared) / (time.perf_counter() - start)


def trainer_run(cfg: TrainingConfig, workers: int, steps: int, storage: Path) -> dict:
    run_cfg = cfg.model_copy(update={
        "max_steps": steps, "eval_every": steps, "epochs": 1000, "mlflow": None,
        "output_dir": str(storage / f"out-{workers}"),
        "scaling": cfg.scaling.model_copy(update={"num_workers": workers, "use_gpu": False, "cpus_per_worker": 1}),
        "storage": cfg.storage.model_copy(update={"path": str(storage / "ray"), "run_name": f"bench-{workers}-{time.time_ns()}"}),
    })
    start = time.perf_counter()
    result = train(run_cfg)
    wall = time.perf_counter() - start
    last = result.history[-1]
    per_rank = last["docs_per_second"]
    return {"workers": workers, "docs_per_second": per_rank * max(1, workers), "per_worker": per_rank,
            "steps": last["step"], "wall_seconds": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/finetune.yaml")
    p.add_argument("--docs", type=int, default=16, help="training documents (dev holdout: 2 more)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer run")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2, help="passes over the documents for the bare encoder")
    p.add_argument("--no-in-process", action="store_true")
    p.add_argument("--output", default=None, help="write the results as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = load_training_config(args.config)
    cfg = cfg.model_copy(update={
        "train": cfg.train.model_copy(update={"limit": args.docs + 2}), "dev": None, "dev_holdout": 2,
        "threads": 1,  # one core per worker, and the same for the baselines
    })
    import ray

    ray.init(num_cpus=max(args.workers) + 1, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
             logging_level=logging.WARNING, log_to_driver=False)
    rows = [{"name": "bare encoder fwd+bwd", "docs_per_second": bare_encoder(cfg, args.docs, args.repeats)}]
    with tempfile.TemporaryDirectory(prefix="glidre-bench-") as tmp:
        if not args.no_in_process:
            r = trainer_run(cfg, 0, args.steps, Path(tmp))
            rows.append({"name": "trainer in-process", **r})
        for w in args.workers:
            r = trainer_run(cfg, w, args.steps, Path(tmp))
            rows.append({"name": f"ray train {w} worker(s)", **r})
    ray.shutdown()
    bare = rows[0]["docs_per_second"]
    for row in rows:
        row["overhead_vs_bare"] = bare / row["docs_per_second"]
    print(f"{'':26s} {'docs/s':>8s} {'overhead':>9s} {'wall s':>8s}")
    for row in rows:
        wall = f"{row['wall_seconds']:8.1f}" if "wall_seconds" in row else f"{'':8s}"
        print(f"{row['name']:26s} {row['docs_per_second']:8.2f} {row['overhead_vs_bare']:8.2f}x {wall}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"config": args.config, "docs": args.docs, "steps": args.steps,
                                                 "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
