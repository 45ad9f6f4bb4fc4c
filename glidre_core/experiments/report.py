"""The results table of an experiment: JSON (every trial, every group) and Markdown.

Trials are grouped by everything but the seed (the arm and the searched values); each group
shows the mean ± sample standard deviation (n - 1) over the seeds of its *finished* trials.
Trials that ASHA stopped, that failed, or that an interruption left unfinished are counted in
the group but give no numbers: a stopped trial never reached its held-out evaluation, and mixing
its dev score with finished ones would bias the mean.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glidre_core.experiments.config import ExperimentConfig

STATUSES = ("done", "stopped", "error", "incomplete")


@dataclass
class TrialRow:
    """One trial as the report sees it."""

    trial_id: str
    arm: str | None
    params: dict[str, Any]
    seed: int
    status: str  # one of STATUSES
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    path: str | None = None
    model_dir: str | None = None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None below two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_rows(rows: list[TrialRow], metrics: list[str]) -> list[dict[str, Any]]:
    """One entry per (arm, params), in order of first appearance, with mean/std per metric."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = json.dumps([row.arm, row.params], sort_keys=True, default=str)
        g = groups.setdefault(key, {"arm": row.arm, "params": row.params, "rows": []})
        g["rows"].append(row)
    out = []
    for g in groups.values():
        done = [r for r in g["rows"] if r.status == "done"]
        entry: dict[str, Any] = {
            "arm": g["arm"], "params": g["params"],
            "seeds": sorted(r.seed for r in done),
            "n": len(done),
            "counts": {s: sum(r.status == s for r in g["rows"]) for s in STATUSES},
            "metrics": {},
        }
        for m in metrics:
            values = [r.metrics[m] for r in done if m in r.metrics and not math.isnan(r.metrics[m])]
            mean, std = mean_std(values)
            entry["metrics"][m] = {"mean": mean, "std": std, "values": values}
        out.append(entry)
    return out


def best_group(groups: list[dict[str, Any]], metric: str, mode: str) -> int | None:
    """Index of the group with the best mean of the selection (dev) metric."""
    scored = [(i, g["metrics"].get(metric, {}).get("mean")) for i, g in enumerate(groups)]
    scored = [(i, v) for i, v in scored if v is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda iv: iv[1])[0]


def build_report(cfg: ExperimentConfig, rows: list[TrialRow], **info: Any) -> dict[str, Any]:
    """The JSON report: experiment settings, counts, groups (mean ± std) and every trial."""
    select = cfg.report.select_by or cfg.metric
    metrics = list(dict.fromkeys([select, cfg.metric, *cfg.report.metrics]))
    groups = group_rows(rows, metrics)
    if cfg.search == "optuna":  # proposals have no natural order: best (dev) first
        sign = -1.0 if cfg.mode == "max" else 1.0
        groups.sort(key=lambda g: (g["metrics"][select]["mean"] is None,
                                   sign * (g["metrics"][select]["mean"] or 0.0)))
    best = best_group(groups, select, cfg.mode)
    return {
        "experiment": cfg.name,
        "description": cfg.description,
        "search": cfg.search, "scheduler": cfg.scheduler,
        "metric": cfg.metric, "selected_by": select, "mode": cfg.mode,
        "param_names": cfg.param_names(),
        "seeds": cfg.seeds,
        "metrics": metrics,
        "std": "sample standard deviation over seeds (n - 1); none below two finished seeds",
        "trials": {s: sum(r.status == s for r in rows) for s in STATUSES} | {"total": len(rows)},
        "best_group": best,
        "groups": groups,
        "rows": [asdict(r) for r in rows],
        **info,
    }


def _format(metric: str, mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    name = metric.lower()
    if "auc" in name:
        scale, digits = 1.0, 3
    elif any(k in name for k in ("f1", "precision", "recall")):
        scale, digits = 100.0, 2
    else:
        scale, digits = 1.0, 4
    text = f"{mean * scale:.{digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{digits}f}"
    return text


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (F1, precision and recall in %, AUC as a fraction)."""
    names = report["param_names"]
    metrics = report["metrics"]
    lines = [
        f"### Experiment `{report['experiment']}`",
        "",
    ]
    if report.get("description"):
        lines += [report["description"].strip(), ""]
    t = report["trials"]
    lines += [
        f"search {report['search']}, scheduler {report['scheduler']}, selection metric `{report['metric']}` "
        f"({report['mode']}, dev data only); trials: {t['done']} done, {t['stopped']} stopped early, "
        f"{t['error']} failed, {t['incomplete']} unfinished, of {t['total']}.",
        "Values: mean ± sample std over seeds (finished trials); F1 / P / R in %.",
        "",
    ]
    if report.get("interrupted"):
        lines += ["**Interrupted**: rerun the same command to resume the unfinished trials.", ""]
    header = [*names, "seeds", *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for i, g in enumerate(report["groups"]):
        values = ([_cell(g["arm"])] if "arm" in names else []) + [_cell(g["params"].get(k)) for k in names if k != "arm"]
        counts = g["counts"]
        seeds = str(g["n"])
        others = [f"{counts[s]} {s}" for s in ("stopped", "error", "incomplete") if counts[s]]
        if others:
            seeds += f" ({', '.join(others)})"
        cells = [*values, seeds] + [_format(m, g["metrics"][m]["mean"], g["metrics"][m]["std"]) for m in metrics]
        if i == report.get("best_group"):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("best_group") is not None:
        lines += ["", f"Bold: the configuration with the best mean `{report.get('selected_by', report['metric'])}` (chosen on dev)."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    md_path.write_text(markdown(report))
    return json_path, md_path
