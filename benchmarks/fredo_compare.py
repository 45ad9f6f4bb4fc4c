"""A FREDo result against the no-model baselines on the same episodes, with paired intervals.

``glidre fewshot fredo`` keeps every episode's counts in its JSON (``per_episode``). This script
reads one such result and, on exactly its episodes:

* recomputes its macro F1 on all of them and on the ids at or above ``--min-id`` (50: the
  reported episodes without the dev slice that chose the recipe);
* scores each ``--baseline`` rule with no model: every label of the episode for every pair the
  rule lets through (``all``, ``same_sentence``, ``same_sentence:G`` = within G words,
  ``same_sentence:G:support`` = and only in the text orders of the label's support facts;
  :mod:`glidre_core.fewshot.candidates`, the rules the prototype recipe uses);
* gives the paired bootstrap interval of (result - baseline), resampling whole episodes
  (:func:`glidre_core.fewshot.metric.paired_bootstrap_difference`).

Why: on FREDo's cross-domain split a candidate rule alone scores close to published models, so a
number means little without the baseline that uses the same rule, on the same episodes.

    .venv/bin/python benchmarks/fredo_compare.py --result benchmarks/results/fredo_cross_domain_1_all_gap.json \\
        --baseline same_sentence:2:support --baseline same_sentence:2 --baseline same_sentence --output-json benchmarks/results/fredo_compare_cd1.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from glidre_core.fewshot.episodes import DEFAULT_DATA_DIR, load_fredo  # noqa: E402
from glidre_core.fewshot.fredo import all_pairs_counts  # noqa: E402
from glidre_core.fewshot.metric import (  # noqa: E402
    EpisodeCounts, bootstrap_interval, macro_scores, paired_bootstrap_difference)

logger = logging.getLogger("fredo_compare")


def parse_rule(text: str) -> tuple[str, int | None, str]:
    """``"same_sentence:2:support"`` -> ``("same_sentence", 2, "support")``;
    ``"same_sentence:2"`` -> ``("same_sentence", 2, "any")``; ``"all"`` -> ``("all", None, "any")``."""
    rule, gap, direction = (text.split(":") + ["", ""])[:3]
    return rule, (int(gap) if gap else None), direction or "any"


def compare(result: dict[str, Any], data_dir: str | Path, baselines: list[str], mode: str = "adapted",
            min_id: int = 50, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The comparison JSON of ``result`` (a ``glidre fewshot fredo`` output) for ``mode``."""
    data = load_fredo(result["split"], data_dir)
    by_id = {e.episode_id: e for e in data.episodes}
    rows = [r for r in result["per_episode"] if mode in r]
    if not rows:
        raise ValueError(f"the result has no {mode!r} counts per episode")
    subsets = {"all": rows, f"ids >= {min_id}": [r for r in rows if r["id"] >= min_id]}
    out: dict[str, Any] = {"result": result.get("model"), "split": result["split"], "mode": mode,
                           "recipe": result.get("recipe"), "subsets": {}}
    for name, sub in subsets.items():
        if not sub:
            continue
        counts = [EpisodeCounts.from_json(r[mode]) for r in sub]
        scores = macro_scores(counts)
        entry: dict[str, Any] = {
            "episodes": len(sub), "macro_f1": scores["macro_f1"], "macro_precision": scores["macro_precision"],
            "macro_recall": scores["macro_recall"],
            "ci95": bootstrap_interval(counts, resamples=resamples, seed=seed), "baselines": {}}
        for text in baselines:
            rule, gap, direction = parse_rule(text)
            base = [all_pairs_counts(data, by_id[r["id"]], rule, gap, direction) for r in sub]
            b = macro_scores(base)
            entry["baselines"][text] = {
                "macro_f1": b["macro_f1"], "macro_precision": b["macro_precision"], "macro_recall": b["macro_recall"],
                "result_minus_baseline": paired_bootstrap_difference(counts, base, resamples=resamples, seed=seed)}
        out["subsets"][name] = entry
        logger.info("%s, %s: %.2f; %s", result["split"], name, entry["macro_f1"], {
            k: f'{v["macro_f1"]:.2f} (diff {v["result_minus_baseline"]["difference"]:+.2f} '
               f'[{v["result_minus_baseline"]["low"]:+.2f}, {v["result_minus_baseline"]["high"]:+.2f}])'
            for k, v in entry["baselines"].items()})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True, help="a glidre fewshot fredo output JSON")
    ap.add_argument("--baseline", action="append", default=[],
                    help="all | same_sentence | same_sentence:GAP | same_sentence:GAP:support")
    ap.add_argument("--mode", default="adapted", choices=("adapted", "zero_shot"))
    ap.add_argument("--min-id", type=int, default=50)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = compare(json.loads(Path(args.result).read_text()), args.data_dir, args.baseline or ["same_sentence"],
                  args.mode, args.min_id, args.resamples)
    out["command_result"] = args.result
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=1) + "\n")
        logger.info("wrote %s", args.output_json)


if __name__ == "__main__":
    main()
