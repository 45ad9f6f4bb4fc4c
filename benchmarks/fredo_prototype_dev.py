"""Choose the prototype recipe (``AdaptationRecipe(method="prototype")``) on FREDo's dev slice.

Protocol (README, "Few-shot: FREDo and adding a relation type"), the same as
``benchmarks/fredo_recipe_dev.py``:

* dev episodes = ids 0..49 of ``cross_domain_1`` (``glidre_core.fewshot.episodes.DEV_EPISODES``);
  reported samples leave ids < 50 out, in both cross-domain splits;
* the grid: candidate rule (every pair, same sentence, same sentence within ``max_gap`` words) x
  direction rule x centering x positive rule x NOTA rule x prototype/label mix x single-label, each with
  ``margin`` swept over
  ``MARGINS`` (the decision ``s_t - s_nota > margin`` is monotone in the margin, so one scoring
  pass per grid point gives every margin); every point is scored with the official FREDo macro
  F1 over the 50 dev episodes (per-type counts pooled over episodes, as :mod:`.metric`);
* the recipe = the point with the best dev macro F1; it is then re-run through the runtime path
  (``EpisodeRunner.run``, the code ``glidre fewshot fredo`` runs) on the same episodes, and the
  two macro F1s must agree.

The pair vectors come from :meth:`HeadAdapter.pair_vectors` (the runtime code); the prototypes
from :meth:`HeadAdapter.prototypes`. Runs in one process (the model's encoder pass over the dev
documents is most of the time):

    nice -n 15 .venv/bin/python benchmarks/fredo_prototype_dev.py --output-json benchmarks/results/fredo_prototype_dev.json
    nice -n 15 .venv/bin/python benchmarks/fredo_prototype_dev.py --grid context --output-json benchmarks/results/fredo_prototype_dev_context.json
    .venv/bin/python benchmarks/fredo_prototype_dev.py --baselines-only --output-json benchmarks/results/fredo_dev_baselines.json
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
for _path in (REPO, BENCHMARKS):  # the library, and fredo_sweep when loaded by file path (tests)
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

from fredo_sweep import all_pairs_dev, best_row, dev_parser, load_dev, parse_args, sweep_grid  # noqa: E402
from glidre_core.fewshot.adapt import AdaptationRecipe  # noqa: E402
from glidre_core.fewshot.episodes import DEV_EPISODES  # noqa: E402
from glidre_core.fewshot.metric import EpisodeCounts, macro_scores  # noqa: E402

logger = logging.getLogger("fredo_prototype_dev")

GRID = {
    "candidates": ("all", "same_sentence"),
    "max_gap": (None, 1, 2, 3, 4, 6),  # words between the closest same-sentence mentions (8, 12: worse, first grid)
    "direction": ("any", "support"),
    "center": (False, True),
    "positive": ("mean", "nearest"),
    "nota": ("mean", "nearest", "none"),
    "prototype_mix": (1.0, 0.75, 0.5),
    "single_label": (False, True),
    "context_weight": (0.0,),
}
#: ``--grid context``: the context vectors' weight, with the pair rules fixed at the chosen ones
#: (same sentence, at most 2 words apart, the support's text orders, centred) and the rest
#: crossed again, since context scores may want another prototype mix, positive or NOTA rule
CONTEXT_GRID = {
    "candidates": ("same_sentence",),
    "max_gap": (2,),
    "direction": ("support",),
    "center": (True,),
    "positive": ("mean", "nearest"),
    "nota": ("mean", "none"),
    "prototype_mix": (1.0, 0.75, 0.5),
    "single_label": (False, True),
    "context_weight": (0.0, 0.25, 0.5, 0.75, 1.0),
}
GRIDS = {"full": GRID, "context": CONTEXT_GRID}
#: the no-model floor is also reported for these gaps
GAP_BASELINES = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15)
MARGINS = tuple(round(-0.5 + 0.02 * i, 2) for i in range(71))  # -0.50 .. 0.90


def sweep_counts(margins: np.ndarray, rows: dict[tuple[str, str], int], codes: list[str], gold: list[tuple],
                 types: list[str]) -> np.ndarray:
    """Official FREDo counts ``[K, T, 3]`` (tp, fp, fn per type of ``types``) of one query
    document at every margin of ``MARGINS``: prediction (pair p, code r) when
    ``margins[p, r] > margin``. ``rows`` maps (head id, tail id) to a pair row; a gold fact
    outside the pairs (a self pair) is always a false negative. Same counts as
    :func:`glidre_core.fewshot.metric.count_document` (a test in ``tests/test_fewshot.py``)."""
    k = np.asarray(MARGINS, dtype=np.float32)
    col = {c: types.index(c) for c in codes}
    dup = np.zeros(margins.shape, dtype=np.int64)  # gold facts per (pair, code), duplicates counted
    out = np.zeros((len(k), len(types), 3), dtype=np.int64)
    for h, t, c in gold:
        p = rows.get((str(h), str(t)))
        if p is None:
            out[:, col[c], 2] += 1
        else:
            dup[p, codes.index(c)] += 1
    pred = margins[None] > k[:, None, None]  # [K, P, R]
    is_gold = dup > 0
    for r, c in enumerate(codes):
        out[:, col[c], 0] += (pred[:, :, r] & is_gold[None, :, r]).sum(1)
        out[:, col[c], 1] += (pred[:, :, r] & ~is_gold[None, :, r]).sum(1)
        out[:, col[c], 2] += (dup[None, :, r] * ~pred[:, :, r]).sum(1)
    return out


def macro_f1_of(counts: np.ndarray, types: list[str]) -> list[float]:
    """Macro F1 (percent) per margin from pooled ``[K, T, 3]`` counts (the library's rule)."""
    return [macro_scores([EpisodeCounts({t: [int(x) for x in c[i]] for i, t in enumerate(types)})])["macro_f1"]
            for c in counts]


def curves(table: list[dict[str, Any]], grid: dict[str, tuple] = GRID) -> list[dict[str, Any]]:
    """The table as one row per grid setting with its macro F1 at every margin of ``MARGINS``
    (``macro_f1[i]`` is at ``MARGINS[i]``; rounded to 1e-4)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for t in table:
        key = tuple(t[k] for k in grid)
        row = rows.setdefault(key, {**dict(zip(grid, key)), "macro_f1": [None] * len(MARGINS)})
        row["macro_f1"][MARGINS.index(t["margin"])] = round(t["macro_f1"], 4)
    return list(rows.values())


def write_json(out: dict[str, Any], path: str) -> None:
    """``out`` as JSON, one line per table row (the table is 1,008 rows of 71 numbers)."""
    table = out.pop("table")
    text = json.dumps(out, indent=1)[:-2]
    rows = ",\n  ".join(json.dumps(r) for r in table)
    Path(path).write_text(f'{text},\n "table": [\n  {rows}\n ]\n}}\n')


def dev_baselines(split: str, data_dir: str) -> dict[str, Any]:
    """The dev slice's no-model floors: every label of the episode for every pair a candidate
    rule lets through (``glidre_core.fewshot.fredo.all_pairs_counts``), per rule."""
    from glidre_core.fewshot.episodes import load_fredo

    data = load_fredo(split, data_dir)
    return {
        "protocol": f"episodes 0..{DEV_EPISODES - 1} of {split}; official FREDo macro F1 (percent); no model: every "
                    "label for every pair the rule keeps",
        "all_pairs_macro_f1": all_pairs_dev(data),
        "same_sentence_pairs_macro_f1": all_pairs_dev(data, "same_sentence"),
        "same_sentence_support_direction_pairs_macro_f1": all_pairs_dev(data, "same_sentence", None, "support"),
        "same_sentence_gap_pairs_macro_f1": {g: all_pairs_dev(data, "same_sentence", g) for g in GAP_BASELINES},
        "same_sentence_gap_support_direction_pairs_macro_f1": {
            g: all_pairs_dev(data, "same_sentence", g, "support") for g in GAP_BASELINES},
    }


def main() -> None:
    ap = dev_parser(__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", choices=sorted(GRIDS), default="full",
                    help="full: every pair rule and scoring option (context_weight 0); context: the context weight")
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--baselines-only", action="store_true",
                    help="only the no-model baselines of the dev slice (seconds; no model, no grid)")
    args = parse_args(ap)
    if args.baselines_only:
        out = dev_baselines(args.split, args.data_dir)
        logger.info("%s", json.dumps(out))
        if args.output_json:
            Path(args.output_json).write_text(json.dumps(out, indent=1) + "\n")
        return
    import torch

    from glidre_core.fewshot.fredo import EpisodeRunner
    from glidre_core.fewshot.prototype import PairRules, pair_rules

    torch.set_num_threads(args.threads)
    model_dir, data, episodes = load_dev(args.model, args.split, args.data_dir)
    types = sorted(data.label_names)
    start = time.perf_counter()
    runner = EpisodeRunner.load(model_dir, data, AdaptationRecipe(method="prototype"))
    adapter = runner.adapter
    needed = sorted({i for e in episodes for i in e.support + e.query})
    adapter.pair_vectors([data.documents[i] for i in needed])
    encode_seconds = time.perf_counter() - start
    logger.info("pair vectors of %d documents in %.0fs", len(needed), encode_seconds)

    grid = GRIDS[args.grid]
    rules: dict[tuple[int, str, int | None], PairRules] = {}

    def pair_rules_of(i: int, rule: str, max_gap: int | None) -> PairRules:
        """Query document ``i``'s candidate pairs, text orders and context vectors (the
        library's rules), computed once per document and rule: the grid scores every document
        under many settings."""
        if (i, rule, max_gap) not in rules:
            rules[i, rule, max_gap] = pair_rules(adapter.pair_vectors([data.documents[i]])[0], data.documents[i],
                                                 rule, max_gap, orders=True, contexts=True)
        return rules[i, rule, max_gap]

    def curve(setting: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
        """The setting's dev macro F1 at every margin of ``MARGINS`` (one scoring pass)."""
        adapter.recipe = AdaptationRecipe(method="prototype", margin=0.0, **setting)  # margins swept below
        pooled = np.zeros((len(MARGINS), len(types), 3), dtype=np.int64)
        for ep in episodes:
            text = {c: data.label_names[c] for c in ep.labeled_relations}
            codes = list(ep.labeled_relations)
            protos = adapter.prototypes(runner.support_documents(ep, text), [text[c] for c in codes])
            for i in ep.query:
                doc = data.documents[i]
                pv = adapter.pair_vectors([doc])[0]
                ids = pv.prepared.entity_ids
                rows = {(str(ids[h]), str(ids[t])): p for p, (h, t) in enumerate(zip(pv.heads, pv.tails))}
                d = protos.margins(pv.vectors, *pair_rules_of(i, setting["candidates"], setting["max_gap"]))
                pooled += sweep_counts(d, rows, codes, data.gold(i, codes), types)
        return [({"margin": margin}, f1) for margin, f1 in zip(MARGINS, macro_f1_of(pooled, types))]

    settings = (dict(zip(grid, values)) for values in itertools.product(*grid.values()))
    valid = (s for s in settings if s["max_gap"] is None or s["candidates"] == "same_sentence")
    table = sweep_grid(valid, curve, start)
    best = best_row(table)
    recipe = AdaptationRecipe(method="prototype", **{k: best[k] for k in (*grid, "margin")})
    # the runtime path on the same episodes: must reproduce the sweep's number
    adapter.recipe = recipe
    runtime = macro_scores([runner.run(ep, zero_shot=False).counts["adapted"] for ep in episodes])
    if abs(runtime["macro_f1"] - best["macro_f1"]) > 1e-9:  # only a score exactly on the margin could differ
        logger.warning("runtime path %.4f != sweep %.4f", runtime["macro_f1"], best["macro_f1"])
    per_setting = {}
    for t in table:
        key = " ".join(f"{k}={t[k]}" for k in grid)
        if key not in per_setting or t["macro_f1"] > per_setting[key]["macro_f1"]:
            per_setting[key] = {"margin": t["margin"], "macro_f1": t["macro_f1"]}
    finetune = REPO / "benchmarks" / "results" / "fredo_recipe_dev.json"
    out = {
        "protocol": f"episodes 0..{DEV_EPISODES - 1} of {args.split}; official FREDo macro F1 (percent); "
                    "prototype method (glidre_core.fewshot.prototype)",
        "model": args.model, "grid": {**grid, "margin": MARGINS},
        "best": best, "recipe": recipe.model_dump(),
        "best_runtime_check": {k: runtime[k] for k in ("macro_f1", "macro_precision", "macro_recall", "per_type")},
        "best_per_setting": per_setting,
        **{k: v for k, v in dev_baselines(args.split, args.data_dir).items() if k != "protocol"},
        "finetune_best_macro_f1": (json.loads(finetune.read_text())["best"]["macro_f1"]
                                   if finetune.exists() else None),
        "documents": len(needed), "encode_seconds": encode_seconds, "seconds": time.perf_counter() - start,
        "table_note": "one row per grid setting; macro_f1[i] is the dev macro F1 at margin grid.margin[i]",
        "table": curves(table, grid),
    }
    logger.info("best: %s (runtime path %.4f; all pairs %.2f)", best, runtime["macro_f1"], out["all_pairs_macro_f1"])
    if args.output_json:
        write_json(out, args.output_json)
        logger.info("wrote %s", args.output_json)


if __name__ == "__main__":
    main()
