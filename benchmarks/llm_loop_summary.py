"""The summary of benchmarks/llm_loop.sh: reads what the loop left under OUT and writes one JSON.

Usage: python benchmarks/llm_loop_summary.py OUT RESULT_JSON TEACHER
(called by the script; rerun it alone to rebuild the JSON from the same run)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

NOTE = ("A code-path demonstration, not a result: 40 raw documents labelled by the teacher, a few "
        "pretraining steps on them (Ray Train, 1 CPU worker), a few fine-tuning epochs on 40 Re-DocRED "
        "dev documents, scored on the first 50 Re-DocRED test documents, on 2 CPU cores shared with "
        "other jobs. The F1 says nothing about the quality of the method: the pretraining corpus is "
        "tiny (and labelled by a model trained on the same Re-DocRED label set), the fine-tuning is a "
        "few minutes long, and 50 test documents give a wide interval.")


def stages(out: Path) -> dict[str, dict]:
    res = {}
    for line in (out / "logs" / "times.tsv").read_text().splitlines():
        name, t0, t1, cmd = line.split("\t")
        res[name] = {"wall_seconds": round(float(t1) - float(t0), 1), "command": cmd.strip()}
    return res


def train_summary(out: Path, name: str, stage: dict) -> dict:
    lines = (out / "logs" / f"{name}.out").read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # glidre train prints its summary last
    summary = json.loads("\n".join(lines[start:]))
    history = json.loads((out / name / "history.json").read_text())
    last = history[-1] if history else {}
    return {
        "steps": last.get("step", 0),
        "epochs_run": last["epoch"] + 1 if history else 0,
        "train_minutes": round(last["minutes"], 2) if history else None,
        "best_dev_f1": summary["dev_f1"],
        "threshold": summary["threshold"],
        "final_dev_eval_of_best": summary.get("final_eval"),
        "dev_history": [{k: r.get(k) for k in ("step", "epoch", "minutes", "train_loss", "dev_f1")} for r in history],
        "best_dir": summary["best_dir"],
        "ray_checkpoint": summary.get("checkpoint"),
        "mlflow_run_id": summary.get("mlflow_run_id"),
        **stage,
    }


def main(out: Path, result_path: Path, teacher: str) -> dict:
    st = stages(out)
    m = json.loads((out / "distill" / "_manifest.json").read_text())
    t = m.get("teacher") or {}
    distill = {
        "teacher": {k: t.get(k) for k in ("name", "kind", "model", "threshold", "entity_threshold") if k in t},
        "prompt": (m.get("prompt") or {}).get("key"),
        **{k: m.get(k) for k in ("reconciled", "docs_read", "docs_written", "docs_errored", "docs_without_relations",
                                 "errors_by_type", "entities_written", "relations_written", "dropped", "repairs",
                                 "tokens", "duration_s")},
        "docs_per_second": (m.get("throughput") or {}).get("docs_per_second"),
        "relation_labels_used": sorted({r["label"] for line in open(out / "distill" / "distilled.jsonl", encoding="utf-8")
                                        if line.strip() for r in json.loads(line).get("relations", [])}),
        "pretrain_reader_check": json.loads((out / "logs" / "pretrain_reader.json").read_text()),
        **st["distill"],
    }
    ev = json.loads((out / "eval" / "test.json").read_text())
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    result = {
        "note": NOTE,
        "teacher": teacher,
        "distill": distill,
        "pretrain": train_summary(out, "pretrain", st["pretrain"]),
        "finetune": train_summary(out, "finetune", st["finetune"]),
        "evaluate": {**{k: ev.get(k) for k in ("f1", "ign_f1", "precision", "recall", "docs", "threshold")},
                     "data": ev.get("data"), **st["evaluate"]},
        "total_wall_minutes": round(sum(s["wall_seconds"] for s in st.values()) / 60, 2),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "load_average_at_end": list(os.getloadavg()),
                    "python": platform.python_version(), "shared": "a training experiment ran alongside (nice 15)"},
        "output_dir": str(out),
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    res = main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
    print(json.dumps(res, indent=2))
    print(f"wrote {sys.argv[2]}", file=sys.stderr)
