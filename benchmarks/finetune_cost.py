"""What storing only a delta costs: top-k-layer fine-tuning (the default model's recipe) against
full fine-tuning, at the same wall-clock budget, on the same machine, at the same time.

Both runs start together, one torch thread each, so machine noise hits both alike. Each uses
``configs/default_model.yaml`` with ``--set`` overrides; only the fine-tuning recipe differs:

* ``top3``: lower 3 layers frozen and cached, top 3 layers + heads trained; checkpoint = delta.
* ``full``: all 6 encoder layers trained, no caching; the checkpoint must hold the whole encoder.

Reported per run: held-out dev F1 over time (the trainer's dev evaluations), seconds per epoch,
trainable parameters and checkpoint size. The test set is not touched.

    python benchmarks/finetune_cost.py --minutes 15 --out benchmarks/results/finetune_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "top3": ["model.trainable_encoder_layers=3", "cache_frozen_layers=true"],
    "full": ["model.trainable_encoder_layers=null", "cache_frozen_layers=false"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget per run")
    ap.add_argument("--epochs", type=int, default=4, help="cosine schedule length (cut by --minutes)")
    ap.add_argument("--eval-every", type=int, default=57, help="optimizer steps between dev evals")
    ap.add_argument("--work", default="runs/finetune_cost")
    ap.add_argument("--out", default="benchmarks/results/finetune_cost.md")
    args = ap.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = {}
    start = time.time()
    for name, sets in RECIPES.items():
        out_dir = Path(args.work) / name
        cmd = [
            sys.executable, "-m", "glidre_core.cli", "train", "--config", "configs/default_model.yaml",
            *sum((["--set", s] for s in sets), []),
            "--set", f"output_dir={out_dir}", "--set", f"max_minutes={args.minutes}",
            "--set", f"epochs={args.epochs}", "--set", f"eval_every={args.eval_every}",
            "--set", "threads=1",
        ]
        out_dir.mkdir(parents=True, exist_ok=True)
        log = open(out_dir / "train.log", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), cmd)
    for name, (p, _) in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"{name} run failed; see {Path(args.work) / name / 'train.log'}")
    wall = time.time() - start

    rows = []
    for name, (_, cmd) in procs.items():
        run = ROOT / args.work / name
        hist = json.loads((run / "history.json").read_text())
        weights = run / "best" / "model.safetensors"
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            stored = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
        last = hist[-1]
        epochs_done = last["epoch"] + 1
        rows.append({
            "recipe": name,
            "best_dev_f1": max(h["dev_f1"] for h in hist),
            "dev_f1_curve": [(round(h["minutes"], 1), round(h["dev_f1"], 4)) for h in hist],
            "epochs_done": epochs_done,
            "minutes": last["minutes"],
            "seconds_per_epoch": 60 * last["minutes"] / max(1, epochs_done),
            "stored_params": stored,
            "checkpoint_mb": weights.stat().st_size / 2**20,
            "command": " ".join(cmd[1:]),
        })
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"wall_seconds": wall, "runs": rows}, indent=2))
    lines = [
        f"# Fine-tuning recipe cost ({args.minutes:g} min per run, both runs concurrent, 1 thread each)",
        "",
        f"Command: `python benchmarks/finetune_cost.py --minutes {args.minutes:g} --epochs {args.epochs}`",
        "",
        "| recipe | best dev F1 | epochs done | s/epoch | stored params | checkpoint (fp16) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {100*r['best_dev_f1']:.1f} | {r['epochs_done']} | {r['seconds_per_epoch']:.0f} | "
            f"{r['stored_params']/1e6:.1f}M | {r['checkpoint_mb']:.1f} MB |"
        )
    top, full = rows[0], rows[1]
    lines += [
        "",
        f"Ratios (one run): full/top3 seconds per epoch = {full['seconds_per_epoch']/top['seconds_per_epoch']:.2f}; "
        f"checkpoint size full/top3 = {full['checkpoint_mb']/top['checkpoint_mb']:.2f}; "
        f"best dev F1 top3 - full = {100*(top['best_dev_f1']-full['best_dev_f1']):+.1f} points.",
        "",
        "Dev F1 over minutes: " + "; ".join(f"{r['recipe']}: {r['dev_f1_curve']}" for r in rows),
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main()
