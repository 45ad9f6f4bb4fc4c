"""FREDo episodic evaluation on Ray: zero-shot and adapted, scored with the official metric.

Per episode (:class:`EpisodeRunner`):

1. the episode's ``labeled_relations`` become label strings (:func:`~.episodes.relation_text`:
   ``USED-FOR`` -> ``used for``);
2. **zero-shot**: the model as loaded predicts those labels on the query documents, at
   ``zero_shot_threshold`` (None = the model's stored threshold);
3. **adapted**: with ``recipe.method="prototype"`` (the default), the query pairs are scored
   against prototypes of the support documents' pair vectors (:mod:`.prototype`, no training);
   with ``"finetune"``, :class:`~.adapt.HeadAdapter` trains the heads on the support documents
   (their facts of those labels), predicts the query documents at the recipe's threshold, and
   restores the weights;
4. both prediction sets are counted against the query documents' gold facts of those labels
   (:mod:`.metric`, FREDo's counting).

Episodes are independent, so they run as Ray tasks (chunks of ``chunk_size`` episodes, one CPU
each). A worker process loads the model and the split once and keeps them for the next chunks;
its encoder cache holds the documents it has seen (FREDo's 500 SciERC abstracts are encoded at
most once per worker). Each episode seeds its own dropout masks (``recipe.seed + episode_id``),
so results do not depend on how episodes are chunked or on the number of workers.

The macro F1 is computed once over all episodes' pooled counts (the official averaging, see
:mod:`.metric`); its 95% interval is a bootstrap over episodes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from glidre_core.documents import Document, Relation
from glidre_core.fewshot.adapt import AdaptationRecipe
from glidre_core.fewshot.candidates import direction_allows, entity_rules, mention_geometry, support_directions
from glidre_core.fewshot.episodes import (
    CONTAMINATED_SPLITS, DEFAULT_DATA_DIR, DEV_EPISODES, Episode, FredoData, FredoSplit, load_fredo, sample_episodes,
)
from glidre_core.fewshot.metric import EpisodeCounts, bootstrap_interval, count_episode, macro_scores

if TYPE_CHECKING:
    from glidre_core.fewshot.adapt import HeadAdapter
    from glidre_core.inference import Predictor

logger = logging.getLogger(__name__)

#: published macro F1 (percent) on FREDo's cross-domain test episodes (all 3,000)
PUBLISHED_MACRO_F1: dict[str, dict[str, float]] = {
    "cross_domain_1": {"GLiDRE": 8.87, "TPN": 3.98, "RAPL": 3.33, "Llama-3-8B prototype tuning": 7.42},
    "cross_domain_3": {"GLiDRE": 6.46, "TPN": 4.48, "RAPL": 5.35, "Llama-3-8B prototype tuning": 7.54},
}
#: probabilities at or below this are not kept when ``keep_scores`` (dev sweeps)
SCORE_FLOOR = 0.01


class FredoConfig(BaseModel):
    """One ``glidre fewshot fredo`` run."""

    model_config = ConfigDict(extra="forbid")
    split: FredoSplit
    model: str = Field("default", description="model directory, 'default' or models:/NAME@ALIAS")
    data_dir: str = str(DEFAULT_DATA_DIR)
    episodes: int | None = Field(100, ge=1, description="seeded sample size outside the dev slice; None = all")
    seed: int = 0
    episode_ids: list[int] | None = Field(None, description="explicit episode ids (overrides episodes/seed)")
    recipe: AdaptationRecipe = Field(default_factory=AdaptationRecipe)
    zero_shot: bool = True
    zero_shot_threshold: float | None = Field(None, gt=0, lt=1, description="None = the model's stored threshold")
    adapted: bool = True
    num_cpus: int = Field(2, ge=0, description="Ray CPUs (tasks of one CPU each); 0 = in this process, no Ray")
    chunk_size: int | None = Field(None, ge=1, description="episodes per Ray task; None = about 4 tasks per CPU")
    torch_threads: int = Field(1, ge=1, description="torch threads per task")
    bootstrap_resamples: int = Field(2000, ge=100)
    keep_scores: bool = Field(False, description="keep every probability above SCORE_FLOOR (threshold sweeps)")


@dataclass
class EpisodeResult:
    """What one episode produced: counts per mode, adaptation losses, optional scores."""

    episode_id: int
    counts: dict[str, EpisodeCounts] = field(default_factory=dict)  # "zero_shot" / "adapted"
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # mode -> per query doc: [(h, t, code, prob)] above SCORE_FLOOR (keep_scores only)
    scores: dict[str, list[list[tuple[int, int, str, float]]]] = field(default_factory=dict)
    gold: list[list[tuple[int, int, str]]] = field(default_factory=list)


def facts_above(
    predictor: "Predictor", docs: list[Document], code_of: dict[str, str], floor: float
) -> list[list[tuple[int, int, str, float]]]:
    """Per document, ``(h, t, code, probability)`` of every ordered pair and label scoring above
    ``floor``; entity ids are FREDo's ``vertexSet`` indices. One pass of the predictor."""
    labels = predictor.relations.labels
    out = []
    for sc in predictor.score_relations(docs):
        ids = sc.prepared.entity_ids
        rows = []
        for p, r in zip(*(sc.probs > floor).nonzero()):
            rows.append((int(ids[sc.heads[p]]), int(ids[sc.tails[p]]), code_of[labels[r]], float(sc.probs[p, r])))
        out.append(rows)
    return out


class EpisodeRunner:
    """Runs episodes of one split with one model (one per Ray worker process, reused)."""

    def __init__(self, adapter: "HeadAdapter", data: FredoData):
        self.adapter = adapter
        self.data = data

    @classmethod
    def load(cls, model_dir: str, data: FredoData, recipe: AdaptationRecipe) -> "EpisodeRunner":
        from glidre_core.fewshot.adapt import HeadAdapter
        from glidre_core.modeling import GLiDRE

        return cls(HeadAdapter(GLiDRE.from_pretrained(model_dir), recipe), data)

    def support_documents(self, episode: Episode, text: dict[str, str]) -> list[Document]:
        """Support documents with only the episode's relations, renamed to their label text
        (what :func:`~glidre_core.modeling.targets.training_batch` matches labels against)."""
        out = []
        for i in episode.support:
            doc = self.data.documents[i]
            rels = [Relation(head=r.head, label=text[r.label], tail=r.tail) for r in doc.relations if r.label in text]
            out.append(doc.model_copy(update={"relations": rels}))
        return out

    def run(self, episode: Episode, *, zero_shot: bool = True, adapted: bool = True, keep_scores: bool = False,
            zero_shot_threshold: float | None = None) -> EpisodeResult:
        start = time.perf_counter()
        codes = list(episode.labeled_relations)
        text = {c: self.data.label_names[c] for c in codes}
        code_of = {t: c for c, t in text.items()}
        labels = [text[c] for c in codes]
        query = [self.data.documents[i] for i in episode.query]
        gold = [self.data.gold(i, codes) for i in episode.query]
        result = EpisodeResult(episode.episode_id, gold=gold)
        adapter = self.adapter
        adapter.encode(query)

        def score(mode: str, predictor: "Predictor") -> None:
            thr = float(predictor.thresholds[0])
            floor = min(SCORE_FLOOR, thr) if keep_scores else thr
            found = facts_above(predictor, query, code_of, floor)
            # the decision rule of Predictor.decode_relations: probability > threshold
            result.counts[mode] = count_episode([[f[:3] for f in doc if f[3] > thr] for doc in found], gold)
            if keep_scores:
                result.scores[mode] = found

        if zero_shot:
            score("zero_shot", adapter.predictor(labels, threshold=zero_shot_threshold, adapted=False))
        if adapted and adapter.recipe.method == "prototype":
            # no training: the query pairs are scored against the support's prototypes
            score("adapted", adapter.prototype_predictor(self.support_documents(episode, text), labels))
        elif adapted:
            with adapter.adapted(self.support_documents(episode, text), labels,
                                 seed=adapter.recipe.seed + episode.episode_id) as losses:
                score("adapted", adapter.predictor(labels))
            result.losses = losses
        result.seconds = time.perf_counter() - start
        return result


# -- Ray ------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def run_chunk(model_dir: str, split: str, data_dir: str, recipe: dict[str, Any], episodes: list[dict[str, Any]],
              options: dict[str, Any]) -> list[EpisodeResult]:
    """A Ray task: run ``episodes`` in this worker process, reusing its model and data."""
    import torch

    torch.set_num_threads(int(options.get("torch_threads", 1)))
    key = (model_dir, split, data_dir, repr(sorted(recipe.items())))
    if _WORKER.get("key") != key:
        _WORKER.clear()
        data = load_fredo(split, data_dir)
        _WORKER.update(key=key, runner=EpisodeRunner.load(model_dir, data, AdaptationRecipe(**recipe)))
    runner: EpisodeRunner = _WORKER["runner"]
    return [runner.run(Episode(**e), zero_shot=options["zero_shot"], adapted=options["adapted"],
                       keep_scores=options["keep_scores"], zero_shot_threshold=options["zero_shot_threshold"])
            for e in episodes]


def _execute(cfg: FredoConfig, model_dir: str, episodes: list[Episode]) -> list[EpisodeResult]:
    """All episodes, as Ray tasks (``num_cpus`` >= 1) or in this process (0)."""
    options = {"zero_shot": cfg.zero_shot, "adapted": cfg.adapted, "keep_scores": cfg.keep_scores,
               "torch_threads": cfg.torch_threads, "zero_shot_threshold": cfg.zero_shot_threshold}
    recipe = cfg.recipe.model_dump()
    size = cfg.chunk_size or max(1, math.ceil(len(episodes) / (4 * max(cfg.num_cpus, 1))))
    chunks = [[e.model_dump() for e in episodes[s : s + size]] for s in range(0, len(episodes), size)]
    start = time.perf_counter()
    results: list[EpisodeResult] = []
    if cfg.num_cpus == 0:
        for chunk in chunks:
            results.extend(run_chunk(model_dir, cfg.split, cfg.data_dir, recipe, chunk, options))
            logger.info("%d/%d episodes (%.0fs)", len(results), len(episodes), time.perf_counter() - start)
        return results
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cfg.num_cpus, log_to_driver=False, runtime_env={"env_vars": {
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(run_chunk)
        data_dir = str(Path(cfg.data_dir).resolve())
        pending = [task.remote(model_dir, cfg.split, data_dir, recipe, c, options) for c in chunks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results.extend(ray.get(ref))
            logger.info("%d/%d episodes (%.0fs)", len(results), len(episodes), time.perf_counter() - start)
    finally:
        if started:
            ray.shutdown()
    return sorted(results, key=lambda r: r.episode_id)


def all_pairs_counts(data: FredoData, episode: Episode, candidates: str = "all",
                     max_gap: int | None = None, direction: str = "any") -> EpisodeCounts:
    """Counts of the trivial baseline that predicts every label for every ordered pair of
    distinct entities of each query document (``candidates="all"``: the floor a model must
    beat), or for every pair that the prototype recipe's candidate rule scores
    (``"same_sentence"``, optionally with ``max_gap``; :mod:`glidre_core.fewshot.candidates`).
    With ``direction="support"``, a label is predicted only in the text orders its support
    facts show, as the prototype recipe's rule. So a recipe is compared with the same rules
    without its pair vectors."""
    codes = episode.labeled_relations
    allowed = np.ones((len(codes), 2), dtype=bool)
    if direction == "support":
        positives = []
        for i in episode.support:
            order = mention_geometry(data.documents[i]).order
            positives += [(codes.index(c), int(order[h, t])) for h, t, c in data.gold(i, codes) if h != t]
        allowed = support_directions(len(codes), positives)
    elif direction != "any":
        raise ValueError(f"unknown direction rule {direction!r}")
    preds, gold = [], []
    for i in episode.query:
        doc = data.documents[i]
        keep, geometry = entity_rules(doc, candidates, max_gap, orders=direction == "support")
        h_idx, t_idx = keep.nonzero()
        ok = direction_allows(allowed, geometry.order[h_idx, t_idx]) if geometry is not None \
            else np.ones((len(h_idx), len(codes)), dtype=bool)
        preds.append([(int(h), int(t), c) for p, (h, t) in enumerate(zip(h_idx, t_idx))
                      for r, c in enumerate(codes) if ok[p, r]])
        gold.append(data.gold(i, codes))
    return count_episode(preds, gold)


def summarize(results: list[EpisodeResult], mode: str, resamples: int, seed: int) -> dict[str, Any]:
    """Official macro scores of one mode over the episodes, with the bootstrap interval."""
    counts = [r.counts[mode] for r in results]
    out = macro_scores(counts)
    out["ci95"] = bootstrap_interval(counts, resamples=resamples, seed=seed)
    return out


def run_fredo(cfg: FredoConfig) -> dict[str, Any]:
    """Run the episodes of ``cfg`` and return the results JSON (macro F1 in percent)."""
    from glidre_core.config import GLiDREConfig
    from glidre_core.model_loading import resolve_model_dir

    if not (cfg.zero_shot or cfg.adapted):
        raise ValueError("nothing to run: zero_shot and adapted are both off")
    data = load_fredo(cfg.split, cfg.data_dir)
    if cfg.episode_ids is not None:
        by_id = {e.episode_id: e for e in data.episodes}
        missing = [i for i in cfg.episode_ids if i not in by_id]
        if missing:
            raise ValueError(f"episode ids {missing[:5]} are not in {cfg.split} (0..{len(data.episodes) - 1})")
        episodes = [by_id[i] for i in cfg.episode_ids]
        sample = "explicit episode ids"
    else:
        episodes = sample_episodes(data.episodes, cfg.episodes, cfg.seed)
        sample = (f"all {len(episodes)} official episodes (dev slice 0..{DEV_EPISODES - 1} included)"
                  if cfg.episodes is None else
                  f"seeded sample (seed {cfg.seed}) of {len(episodes)} episodes with ids >= {DEV_EPISODES}")
    model_dir = str(resolve_model_dir(cfg.model))
    stored_threshold = GLiDREConfig.load(model_dir).threshold
    start = time.perf_counter()
    results = _execute(cfg, model_dir, episodes)
    elapsed = time.perf_counter() - start
    out: dict[str, Any] = {
        "benchmark": "FREDo", "split": cfg.split, "model": cfg.model,
        "comparable_with_published": cfg.split not in CONTAMINATED_SPLITS,
        "units": "percent",
        "metric": "FREDo official macro F1: tp/fp/fn pooled per relation type over all episodes' query "
                  "documents, per-type F1, unweighted mean over types with gold (nicpopovic/FREDo "
                  "src/util.py get_f1_macro); ci95 = percentile bootstrap over episodes",
        "sample": sample, "seed": cfg.seed, "episodes": len(results),
        "episode_ids": [r.episode_id for r in results],
        "recipe": cfg.recipe.model_dump(),
        "thresholds": {"zero_shot": cfg.zero_shot_threshold if cfg.zero_shot_threshold is not None else stored_threshold,
                       "adapted": cfg.recipe.threshold if cfg.recipe.threshold is not None else stored_threshold},
        "published_macro_f1": PUBLISHED_MACRO_F1.get(cfg.split, {}),
        "num_cpus": cfg.num_cpus, "seconds": elapsed,
        "seconds_per_episode": elapsed / max(len(results), 1),
        "cpu_count": os.cpu_count(),
    }
    if cfg.split in CONTAMINATED_SPLITS:
        out["warning"] = ("in-domain FREDo documents are DocRED dev documents, which Re-DocRED dev/test were built "
                          "from; the default model trained on Re-DocRED dev: NOT comparable with published numbers")
    for mode in ("adapted", "zero_shot"):
        if (mode == "adapted" and cfg.adapted) or (mode == "zero_shot" and cfg.zero_shot):
            out[mode] = summarize(results, mode, cfg.bootstrap_resamples, cfg.seed)
    main = out["adapted"] if cfg.adapted else out["zero_shot"]
    out["macro_f1"] = main["macro_f1"]
    out["macro_f1_ci95"] = [main["ci95"]["low"], main["ci95"]["high"]]
    by_id = {e.episode_id: e for e in episodes}
    out["all_pairs_macro_f1"] = macro_scores([all_pairs_counts(data, by_id[r.episode_id]) for r in results])["macro_f1"]
    if all(m.sent_id is not None for d in data.documents for e in d.entities for m in e.mentions):
        out["same_sentence_pairs_macro_f1"] = macro_scores(
            [all_pairs_counts(data, by_id[r.episode_id], "same_sentence") for r in results])["macro_f1"]
        rec = cfg.recipe
        if cfg.adapted and rec.method == "prototype" and (rec.max_gap is not None or rec.direction != "any"):
            # the floor of this recipe: every label for exactly the pairs (and text orders) it scores
            out["recipe_candidate_pairs_macro_f1"] = macro_scores(
                [all_pairs_counts(data, by_id[r.episode_id], rec.candidates, rec.max_gap, rec.direction)
                 for r in results])["macro_f1"]
    if cfg.zero_shot:
        out["zero_shot_macro_f1"] = out["zero_shot"]["macro_f1"]
        out["zero_shot_macro_f1_ci95"] = [out["zero_shot"]["ci95"]["low"], out["zero_shot"]["ci95"]["high"]]
    out["per_episode"] = [
        {"id": r.episode_id, **{m: c.to_json() for m, c in r.counts.items()},
         "loss": [r.losses[0], r.losses[-1]] if r.losses else None, "seconds": round(r.seconds, 3)}
        for r in results
    ]
    if cfg.keep_scores:
        out["_results"] = results  # not JSON: for in-process sweeps (benchmarks/fredo_recipe_dev.py)
    return out
