"""Choose the few-shot adaptation recipe on FREDo's dev slice (never on reported episodes).

Protocol (README, "Few-shot: FREDo and adding a relation type"):

* dev episodes = ids 0..49 of ``cross_domain_1`` (``glidre_core.fewshot.episodes.DEV_EPISODES``);
  every reported sample leaves ids < 50 out, in both cross-domain splits;
* a grid of trajectories: trained parameters x learning rate, each a constant-lr run of
  ``max(EPOCHS)`` epochs per episode, with the query documents scored after each epoch in
  ``EPOCHS`` (one trajectory gives every epoch count) and at epoch 0 (zero-shot);
* every scored point is thresholded at every value of ``THRESHOLDS`` and scored with the
  official FREDo macro F1 over the 50 dev episodes;
* the recipe = the (parameters, lr, epochs, threshold) with the best dev macro F1; the
  zero-shot threshold = the best threshold at epoch 0.

Episodes run as Ray tasks (``--num-cpus``), like ``glidre fewshot fredo``.

    nice -n 15 .venv/bin/python benchmarks/fredo_recipe_dev.py --output-json benchmarks/results/fredo_recipe_dev.json \
        --scores-pickle runs/fewshot/dev_scores.pkl
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
for _path in (REPO, BENCHMARKS):  # the library, and fredo_sweep when loaded by file path
    if str(_path) not in sys.path:
        sys.path.append(str(_path))

from fredo_sweep import all_pairs_dev, best_row, dev_parser, load_dev, parse_args, sweep_grid  # noqa: E402
from glidre_core.fewshot.adapt import AdaptationRecipe  # noqa: E402
from glidre_core.fewshot.episodes import DEV_EPISODES, load_fredo  # noqa: E402
from glidre_core.fewshot.metric import count_episode, macro_scores  # noqa: E402

logger = logging.getLogger("fredo_recipe_dev")

EPOCHS = (5, 10, 20, 40)
THRESHOLDS = (0.01, 0.02, 0.03, 0.04) + tuple(round(0.05 * i, 2) for i in range(1, 20))
GRID = {
    "train": {"heads": ["scorer.", "label_encoder.ffn."], "label_ffn": ["label_encoder.ffn."]},
    "lr": (1e-4, 3e-4, 1e-3),
}
FLOOR = 0.01


def dev_chunk(model_dir: str, split: str, data_dir: str, recipe: dict[str, Any], episode_ids: list[int],
              checkpoints: list[int]) -> list[dict[str, Any]]:
    """Scores of the query documents at epoch 0 and at every checkpoint epoch, per episode."""
    import torch

    from glidre_core.fewshot.fredo import EpisodeRunner, facts_above

    torch.set_num_threads(1)
    data = load_fredo(split, data_dir)
    runner = EpisodeRunner.load(model_dir, data, AdaptationRecipe(**recipe))
    adapter = runner.adapter
    out = []
    for eid in episode_ids:
        ep = data.episodes[eid]
        text = {c: data.label_names[c] for c in ep.labeled_relations}
        code_of = {t: c for c, t in text.items()}
        labels = [text[c] for c in ep.labeled_relations]
        query = [data.documents[i] for i in ep.query]
        adapter.encode(query)
        scores: dict[int, Any] = {0: facts_above(adapter.predictor(labels, adapted=False), query, code_of, FLOOR)}

        def on_epoch(epoch: int, loss: float) -> None:
            if epoch in checkpoints:
                scores[epoch] = facts_above(adapter.predictor(labels, threshold=0.5), query, code_of, FLOOR)

        with adapter.adapted(runner.support_documents(ep, text), labels, seed=adapter.recipe.seed + eid,
                             on_epoch=on_epoch):
            pass
        out.append({"id": eid, "gold": [data.gold(i, ep.labeled_relations) for i in ep.query], "scores": scores})
    return out


def sweep(results: list[dict[str, Any]], epoch: int) -> dict[float, float]:
    """Dev macro F1 at every threshold of the scores at ``epoch``."""
    curve = {}
    for thr in THRESHOLDS:
        counts = [count_episode([[f[:3] for f in doc if f[3] > thr] for doc in r["scores"][epoch]], r["gold"])
                  for r in results]
        curve[thr] = macro_scores(counts)["macro_f1"]
    return curve


def main() -> None:
    ap = dev_parser(__doc__)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--scores-pickle", default=None, help="also keep every trajectory's raw scores (re-sweeps)")
    args = parse_args(ap)
    import ray

    model_dir, data, episodes = load_dev(args.model, args.split, args.data_dir)
    ids = [e.episode_id for e in episodes]
    ray.init(num_cpus=args.num_cpus, log_to_driver=False, runtime_env={"env_vars": {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    task = ray.remote(num_cpus=1)(dev_chunk)
    start = time.perf_counter()
    trajectories = {}  # every trajectory submitted first: they run while earlier ones are scored
    for train_name, prefixes in GRID["train"].items():
        for lr in GRID["lr"]:
            recipe = AdaptationRecipe(method="finetune", epochs=max(EPOCHS), lr=lr, train=prefixes).model_dump()
            half = len(ids) // 2
            trajectories[(train_name, lr)] = [task.remote(model_dir, args.split, args.data_dir, recipe, part,
                                                          list(EPOCHS)) for part in (ids[:half], ids[half:])]
    zero_shot_curve = None
    raw = {}

    def curve(setting: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
        """The trajectory's dev macro F1 at every (checkpoint epoch, threshold)."""
        nonlocal zero_shot_curve
        key = (setting["train"], setting["lr"])
        results = sorted((r for part in ray.get(trajectories[key]) for r in part), key=lambda r: r["id"])
        raw[key] = results
        if args.scores_pickle:
            Path(args.scores_pickle).write_bytes(pickle.dumps(raw))
        if zero_shot_curve is None:
            zero_shot_curve = sweep(results, 0)
        return [({"epochs": epoch, "threshold": thr}, f1)
                for epoch in EPOCHS for thr, f1 in sweep(results, epoch).items()]

    table = sweep_grid(({"train": train_name, "lr": lr} for train_name, lr in trajectories), curve, start)
    ray.shutdown()
    best = best_row(table)
    zs_thr, zs_f1 = max(zero_shot_curve.items(), key=lambda kv: kv[1])
    out = {
        "protocol": f"episodes 0..{DEV_EPISODES - 1} of {args.split}; official FREDo macro F1 (percent)",
        "model": args.model, "grid": {"train": GRID["train"], "lr": GRID["lr"], "epochs": EPOCHS,
                                      "thresholds": THRESHOLDS},
        "best": best, "zero_shot_best": {"threshold": zs_thr, "macro_f1": zs_f1},
        "all_pairs_macro_f1": all_pairs_dev(data),
        "zero_shot_curve": zero_shot_curve, "seconds": time.perf_counter() - start, "table": table,
    }
    logger.info("best: %s; zero-shot best threshold %.2f (dev macro F1 %.2f)", best, zs_thr, zs_f1)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=1))
        logger.info("wrote %s", args.output_json)


if __name__ == "__main__":
    main()
