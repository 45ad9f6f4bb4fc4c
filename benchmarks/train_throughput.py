#!/usr/bin/env python
"""Training step time against the bare encoder's forward+backward on the same batches.

    nice -n 10 .venv/bin/python benchmarks/train_throughput.py --config configs/default_model.yaml \
        --docs 16 --reps 3
    python benchmarks/train_throughput.py --device cuda --batch-size 8 --bf16 on

Arms, interleaved batch by batch (the order alternates), after one warm-up pass:

* ``step``: one optimizer step exactly as :class:`glidre_core.training.trainer.Trainer` takes it:
  ``targets.training_batch`` (collate + targets, one host-to-device copy), the frozen-layer cache
  attached (``cache_frozen_layers``), the trainer's loss module (``joint_loss`` of the model's
  output against ``encode_labels(labels)``) under the trainer's autocast, ``backward``,
  gradient clipping, AdamW ``step``, the LR scheduler and ``zero_grad``. The model, the prepared
  documents, the cache and the optimizer are the Trainer's own (built by its constructor).
* ``bare``: the HF encoder inside ``model.encoder.model`` on exactly the same padded windows
  (``model.collate`` of the same documents, built outside the timing): forward through every layer
  under the same autocast, ``last_hidden_state.float().mean().backward()`` (gradients reach the
  trainable layers only, as in training), ``zero_grad``. No heads, no loss, no optimizer.

ratio = time(bare) / time(step), the median over reps of the paired per-rep ratio; the target is
>= 0.5 (a step costs at most twice the bare encoder's forward+backward). With frozen lower layers
cached, a step runs only the trainable top layers, so the ratio can exceed 1.

``--loop-steps N`` also runs the real ``Trainer.train`` loop for N steps and reports the median
interval between its ``on_step`` callbacks (the loop's own batches, shuffled; the dev evaluation
after the last step is outside the intervals), as a check that the mirrored step is the loop's.
``--ray-workers 1 2`` additionally runs ``glidre_core.ray_train.train`` with N workers.

Results: ``benchmarks/results/train_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_benchmark import synchronize  # noqa: E402  (the sibling benchmark script)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
TARGET_RATIO = 0.5

logger = logging.getLogger("train_throughput")


def machine_info(device: torch.device) -> dict[str, Any]:
    """The model benchmark's machine description (CPU model and flags, versions, GPU name)."""
    from model_benchmark import machine_info as describe

    return describe(torch.get_num_threads(), device)


def benchmark_config(args: argparse.Namespace, output_dir: Path):
    """The training config of the run: ``--config`` with the benchmark's overrides."""
    from glidre_core.training import load_training_config

    cfg = load_training_config(args.config, args.set)
    train_path = Path(cfg.train.path)
    data = os.environ.get("GLIDRE_DATA")
    if not train_path.exists() and data:
        # the GPU recipe unpacks the data elsewhere: same corpus folder and file name under GLIDRE_DATA
        train_path = Path(data) / train_path.parent.name / train_path.name
    update: dict[str, Any] = {
        "train": cfg.train.model_copy(update={"limit": args.docs + args.dev_docs, "path": str(train_path)}),
        "dev": None, "dev_holdout": args.dev_docs, "extra_train": [], "extra_dev": [],
        "output_dir": str(output_dir), "mlflow": None, "max_minutes": None,
    }
    if args.batch_size is not None:
        update["batch_size"] = args.batch_size
    if args.bf16 != "config":
        # "on" measures bf16 autocast even where it is emulated (the trainer alone would fall back to fp32)
        update["bf16"] = update["force_bf16"] = args.bf16 == "on"
    if args.threads is not None:
        update["threads"] = args.threads
    if args.no_cache:
        update["cache_frozen_layers"] = False
    return cfg.model_copy(update=update)


def interleaved(arms: dict[str, Callable[[int], None]], n_batches: int, reps: int, device: torch.device):
    """Per rep, each arm's summed wall time over all batches; arms alternate batch by batch."""
    names = list(arms)

    def one_pass(rep: int) -> dict[str, float]:
        wall = dict.fromkeys(names, 0.0)
        for i in range(n_batches):
            order = names if (rep + i) % 2 == 0 else names[::-1]
            for name in order:
                synchronize(device)
                t0 = time.perf_counter()
                arms[name](i)
                synchronize(device)
                wall[name] += time.perf_counter() - t0
        return wall

    gc.collect()
    gc.disable()
    try:
        one_pass(0)  # warm-up
        walls = []
        for rep in range(reps):
            walls.append(one_pass(rep + 1))
            gc.collect()
            logger.info("rep %d/%d: %s", rep + 1, reps, ", ".join(f"{n} {s:.2f}s" for n, s in walls[-1].items()))
    finally:
        gc.enable()
    return walls


def step_vs_bare(trainer, args: argparse.Namespace) -> dict[str, Any]:
    from glidre_core.modeling.targets import training_batch
    from glidre_core.training.trainer import cosine_with_warmup

    cfg, model, device = trainer.cfg, trainer.model, trainer.device
    bs = cfg.batch_size
    ids = [d.doc_id for d in trainer.train_docs]
    groups = [ids[s : s + bs] for s in range(0, len(ids) - bs + 1, bs)]  # full batches only
    if not groups:
        raise SystemExit(f"--docs {args.docs} gives no full batch of {bs}")
    rel_labels = trainer.labels if cfg.model.relation_loss_weight > 0 else None
    types = trainer.entity_labels or None
    optimizer = trainer.build_optimizer()
    total = len(groups) * (args.reps + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, int(cfg.warmup_ratio * total)))
    net = trainer.loss_module()
    params = [p for p in model.parameters() if p.requires_grad]
    hf = model.encoder.model
    autocast = trainer.autocast
    model.train()

    bare_inputs, shapes = [], []
    with torch.no_grad():
        for g in groups:
            batch, _ = model.collate([trainer.prepared[i] for i in g])
            bare_inputs.append((batch.input_ids, batch.key_mask.long()))
            shapes.append(list(batch.input_ids.shape))

    def step(i: int) -> None:
        docs = [trainer.prepared[d] for d in groups[i]]
        batch = training_batch(model, docs, rel_labels, types)
        if trainer.cache is not None:
            batch = trainer.cache.attach(batch)
        with autocast():
            loss = net(batch, rel_labels, types) / cfg.grad_accum
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    encoder_trainable = any(p.requires_grad for p in hf.parameters())

    def bare(i: int) -> None:
        ids_, mask = bare_inputs[i]
        with autocast():
            hidden = hf(input_ids=ids_, attention_mask=mask).last_hidden_state
        if encoder_trainable:
            hidden.float().mean().backward()
        model.zero_grad(set_to_none=True)

    walls = interleaved({"step": step, "bare": bare}, len(groups), args.reps, device)
    n_docs = len(groups) * bs
    out: dict[str, Any] = {
        "batches": len(groups), "docs_per_rep": n_docs, "reps": args.reps, "window_shapes": shapes,
        "bare_backward": "through the trainable encoder layers" if encoder_trainable else "none (encoder frozen)",
        "arms": {},
    }
    for name in ("step", "bare"):
        t = [w[name] for w in walls]
        med = statistics.median(t)
        out["arms"][name] = {"wall_s": t, "median_wall_s": med, "seconds_per_batch": med / len(groups),
                             "docs_per_s": n_docs / med, "docs_per_s_best": n_docs / min(t)}
    per_rep = [w["bare"] / w["step"] for w in walls]
    out["ratio_per_rep"] = per_rep
    out["ratio"] = statistics.median(per_rep)
    out["ratio_best_times"] = min(w["bare"] for w in walls) / min(w["step"] for w in walls)
    out["target_ratio"] = TARGET_RATIO
    out["meets_target"] = out["ratio"] >= TARGET_RATIO
    return out


def trainer_loop(trainer, steps: int) -> dict[str, Any]:
    """The real ``Trainer.train`` loop for ``steps`` steps: median interval between steps."""
    stamps: list[float] = []
    device = trainer.device

    def on_step(step: int) -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    trainer.on_step = on_step
    trainer.cfg = trainer.cfg.model_copy(update={"max_steps": steps, "eval_every": 10**9})
    trainer.train()
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]  # the first step (set-up) has none
    med = statistics.median(intervals) if intervals else float("nan")
    return {"steps": len(stamps), "intervals_s": intervals, "median_step_s": med,
            "docs_per_s": trainer.cfg.batch_size / med if intervals else None}


def ray_run(cfg, workers: int, steps: int, storage: Path) -> dict[str, Any]:
    from glidre_core.ray_train import train

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


def markdown(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["step_vs_bare"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    dev = m["device"] + (f" ({m['cuda_device_name']})" if m.get("cuda_device_name") else "")
    c = res["config"]
    lines = [
        "# GLiDRE training throughput",
        "",
        f"Command: `{res['command']}` (niceness {m['niceness']})  ",
        f"Config: `{c['path']}` (batch {c['batch_size']}, bf16 {c['bf16']}, precision run {c.get('precision', 'n/a')}, trainable encoder layers "
        f"{c['trainable_encoder_layers']}, frozen layers cached {c['cache_frozen_layers']}, grad accum "
        f"{c['grad_accum']}), {c['train_docs']} training docs  ",
        f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}; {flags}), device {dev}, torch threads "
        f"{m['torch_threads']}, torch {m['torch']}, transformers {m['transformers']}; load average at start "
        f"{m['load_average_start'][0]:.2f}, at end {m.get('load_average_end', [float('nan')])[0]:.2f}  ",
        f"Date {res['date']}",
        "",
        f"## Training step vs bare encoder forward+backward ({s['batches']} batches x {s['reps']} interleaved reps)",
        "",
        "| arm | s / batch (median) | docs/s (median) | docs/s (best) |",
        "|---|---:|---:|---:|",
    ]
    desc = {"step": "training step (training_batch + cache + loss + backward + clip + AdamW + scheduler)",
            "bare": f"bare encoder forward + backward ({s['bare_backward']})"}
    for name, a in s["arms"].items():
        lines.append(f"| {desc[name]} | {a['seconds_per_batch']:.3f} | {a['docs_per_s']:.2f} | {a['docs_per_s_best']:.2f} |")
    verdict = "meets" if s["meets_target"] else "BELOW"
    lines += [
        "",
        f"Step time ratio (bare fwd+bwd time / step time) = **{s['ratio']:.3f}** ({verdict} the >= "
        f"{s['target_ratio']} target); best-time ratio {s['ratio_best_times']:.3f}; per rep "
        + ", ".join(f"{r:.3f}" for r in s["ratio_per_rep"]) + ".",
        "",
    ]
    loop = res.get("trainer_loop")
    if loop:
        lines += [
            f"Real `Trainer.train` loop, {loop['steps']} steps: median step {loop['median_step_s']:.3f} s "
            f"({loop['docs_per_s']:.2f} docs/s) against {s['arms']['step']['seconds_per_batch']:.3f} s for the mirrored "
            "step above. The loop takes its own shuffled batches (other padded lengths), so this is a check of the "
            "order of magnitude, not a paired comparison.",
            "",
        ]
    if res.get("ray"):
        lines += ["| Ray Train | docs/s | per worker | wall s (incl. start-up) |", "|---|---:|---:|---:|"]
        for r in res["ray"]:
            lines.append(f"| {r['workers']} worker(s) | {r['docs_per_second']:.2f} | {r['per_worker']:.2f} | {r['wall_seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default_model.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (repeatable)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=None, help="documents per step (default: the config's)")
    p.add_argument("--bf16", choices=["config", "on", "off"], default="config",
                   help="bf16 autocast: on forces it even where emulated; config = the trainer's rule (default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    p.add_argument("--no-cache", action="store_true", help="do not cache the frozen lower layers")
    p.add_argument("--docs", type=int, default=16, help="training documents (the timed batches)")
    p.add_argument("--dev-docs", type=int, default=2, help="documents held out as dev (the Trainer needs some)")
    p.add_argument("--reps", type=int, default=3, help="timed interleaved passes over the batches (after a warm-up)")
    p.add_argument("--loop-steps", type=int, default=0, help="also time the real Trainer.train loop for N steps")
    p.add_argument("--ray-workers", "--workers", type=int, nargs="*", default=[],
                   help="also run Ray Train with these worker counts (CPU)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--out-name", default="train_throughput")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    from glidre_core.training.trainer import Trainer

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    command = "python " + shlex.join(["benchmarks/train_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    res: dict[str, Any] = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory(prefix="glidre-train-bench-") as tmp:
        cfg = benchmark_config(args, Path(tmp) / "out")
        t0 = time.perf_counter()
        trainer = Trainer(cfg, device=device)
        setup_s = time.perf_counter() - t0
        res["machine"] = machine_info(device)
        res["config"] = {
            "path": args.config, "batch_size": cfg.batch_size, "bf16": cfg.bf16, "precision": trainer.precision,
            "grad_accum": cfg.grad_accum,
            "cache_frozen_layers": cfg.cache_frozen_layers, "cache_mode": getattr(trainer.cache, "mode", None),
            "trainable_encoder_layers": cfg.model.trainable_encoder_layers, "threads": cfg.threads,
            "train_docs": len(trainer.train_docs), "labels": len(trainer.labels),
            "entity_types": len(trainer.entity_labels), "trainer_setup_s": setup_s,
        }
        res["step_vs_bare"] = step_vs_bare(trainer, args)
        if args.loop_steps:
            res["trainer_loop"] = trainer_loop(trainer, args.loop_steps)
        del trainer
        gc.collect()
        if args.ray_workers:
            import ray

            ray.init(num_cpus=max(args.ray_workers) + 1, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
            try:
                res["ray"] = [ray_run(cfg, w, max(args.loop_steps, 8), Path(tmp)) for w in args.ray_workers]
            finally:
                ray.shutdown()
    res["machine"]["load_average_end"] = list(os.getloadavg())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.out_name}.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (args.out_dir / f"{args.out_name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
