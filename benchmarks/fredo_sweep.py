"""What the FREDo dev-slice recipe sweeps share (``fredo_recipe_dev.py``, ``fredo_prototype_dev.py``).

* :func:`dev_parser` / :func:`parse_args`: the common command line (``--model``, ``--data-dir``,
  ``--split``; each script adds its own options) and the logging setup;
* :func:`load_dev`: the model directory, the split and its dev episodes (ids 0..49 of the split,
  ``glidre_core.fewshot.episodes.DEV_EPISODES``; checked);
* :func:`sweep_grid`: the sweep loop: for each grid setting, the dev macro F1 at every decision
  value (threshold, epochs, margin...) as table rows, with each setting's best logged;
* :func:`best_row` and :func:`all_pairs_dev` (the no-model floor).

Not a script: imported by the two scripts (which put ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from glidre_core.fewshot.episodes import DEV_EPISODES, Episode, FredoData, dev_episodes, load_fredo  # noqa: E402
from glidre_core.fewshot.metric import macro_scores  # noqa: E402

logger = logging.getLogger("fredo_sweep")

#: one decision value of a setting's curve (e.g. ``{"margin": 0.1}``) and its dev macro F1
Point = tuple[dict[str, Any], float]


def dev_parser(description: str | None) -> argparse.ArgumentParser:
    """The sweeps' common options; the caller adds its own, then :func:`parse_args`."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "fredo"))
    ap.add_argument("--split", default="cross_domain_1")
    return ap


def parse_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line and set up logging."""
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args


def load_dev(model: str, split: str, data_dir: str) -> tuple[str, FredoData, list[Episode]]:
    """The model directory, the split's data and its dev episodes (ids ``0..DEV_EPISODES-1``)."""
    from glidre_core.model_loading import resolve_model_dir

    model_dir = str(resolve_model_dir(model))
    data = load_fredo(split, data_dir)
    episodes = dev_episodes(data.episodes)
    ids = [e.episode_id for e in episodes]
    assert ids == list(range(DEV_EPISODES)), ids
    return model_dir, data, episodes


def sweep_grid(settings: Iterable[dict[str, Any]], curve: Callable[[dict[str, Any]], Iterable[Point]],
               start: float | None = None) -> list[dict[str, Any]]:
    """The dev table of a grid: for each setting, one row ``{**setting, **point, "macro_f1": f1}``
    per ``(point, f1)`` of ``curve(setting)``, in order; each setting's best point is logged
    (with the seconds since ``start``, a ``time.perf_counter()`` value)."""
    start = time.perf_counter() if start is None else start
    table: list[dict[str, Any]] = []
    for setting in settings:
        rows = [{**setting, **point, "macro_f1": f1} for point, f1 in curve(setting)]
        table.extend(rows)
        best = best_row(rows)
        logger.info("%s: best dev macro F1 %.2f at %s after %.0fs", setting, best["macro_f1"],
                    {k: v for k, v in best.items() if k not in setting and k != "macro_f1"},
                    time.perf_counter() - start)
    return table


def best_row(table: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the best dev macro F1 (the first one on ties)."""
    return max(table, key=lambda t: t["macro_f1"])


def all_pairs_dev(data: FredoData, candidates: str = "all", max_gap: int | None = None,
                  direction: str = "any") -> float:
    """Dev macro F1 of predicting every label for every ordered pair (no model; ``candidates``
    as :func:`glidre_core.fewshot.fredo.all_pairs_counts`): the floor."""
    from glidre_core.fewshot.fredo import all_pairs_counts

    return macro_scores([all_pairs_counts(data, e, candidates, max_gap, direction)
                         for e in dev_episodes(data.episodes)])["macro_f1"]
