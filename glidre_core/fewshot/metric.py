"""FREDo's official metric: macro F1 over relation types, with counts pooled over all episodes.

Matched line by line to the authors' code (``github.com/nicpopovic/FREDo``, commit b7f0344):
the counting loop of ``train.py`` (its "SCIERC TEST EVAL" block) and ``get_f1_macro`` in
``src/util.py``.

**Counting** (:func:`count_episode`), per query document, with predictions and gold as lists of
``[h, t, r]`` (entity indices and the relation code; gold restricted to the episode's
``labeled_relations``):

* each prediction is a true positive of its type if it is *in* the gold list, else a false
  positive;
* each gold fact *not in* the prediction list is a false negative of its type.

Membership is list membership, as in the official code: a gold fact listed twice and predicted
once is one true positive; listed twice and not predicted, two false negatives.

**Averaging** (:func:`macro_scores`): true positives, false positives and false negatives are
summed per relation type over *every* query document of *every* episode (one pool per type, not
one score per episode). Per type, P = tp/(tp+fp), R = tp/(tp+fn), F1 = 2PR/(P+R) (each 0 when
its denominator is 0). Types with no gold fact anywhere (tp + fn = 0; only predicted) are
skipped. Macro P, R and F1 are the unweighted means over the remaining types (macro F1 is the
mean of per-type F1s, not the F1 of macro P and R), reported in **percent**, like the official
``100 * sum(f) / len(f)``.

Confidence interval (:func:`bootstrap_interval`): episodes are the sampling unit, so the
interval resamples whole episodes with replacement and recomputes the pooled macro F1 (a
percentile bootstrap). A t-interval over per-episode scores would describe a different
statistic: the official number is not a mean of per-episode scores.

Torch-free, so the metric can be tested and recomputed from a results JSON anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Fact = tuple[int, int, str] | list  # [h, t, r]


@dataclass
class EpisodeCounts:
    """Per relation type ``[tp, fp, fn]`` of one episode (or of any set of query documents).
    Insertion order follows the official code's key creation (first seen, predictions first)."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, other: "EpisodeCounts") -> "EpisodeCounts":
        for r, (tp, fp, fn) in other.counts.items():
            row = self.counts.setdefault(r, [0, 0, 0])
            row[0] += tp
            row[1] += fp
            row[2] += fn
        return self

    def to_json(self) -> dict[str, list[int]]:
        return {r: list(v) for r, v in self.counts.items()}

    @classmethod
    def from_json(cls, data: dict[str, Sequence[int]]) -> "EpisodeCounts":
        return cls({r: [int(x) for x in v] for r, v in data.items()})


def count_document(predictions: Sequence[Fact], gold: Sequence[Fact], into: EpisodeCounts | None = None) -> EpisodeCounts:
    """The official counting loop for one query document (see the module docstring)."""
    out = EpisodeCounts() if into is None else into
    preds = [list(p) for p in predictions]
    lbs = [list(g) for g in gold]
    for inf in preds:
        row = out.counts.setdefault(inf[2], [0, 0, 0])
        if inf in lbs:
            row[0] += 1
        else:
            row[1] += 1
    for label in lbs:
        row = out.counts.setdefault(label[2], [0, 0, 0])
        if label not in preds:
            row[2] += 1
    return out


def count_episode(predictions: Sequence[Sequence[Fact]], gold: Sequence[Sequence[Fact]]) -> EpisodeCounts:
    """Counts of one episode: ``predictions[i]`` and ``gold[i]`` belong to its i-th query document."""
    if len(predictions) != len(gold):
        raise ValueError(f"{len(predictions)} prediction lists for {len(gold)} query documents")
    out = EpisodeCounts()
    for p, g in zip(predictions, gold):
        count_document(p, g, out)
    return out


def pool(episodes: Iterable[EpisodeCounts]) -> EpisodeCounts:
    """Counts summed per relation type over episodes (the official accumulation)."""
    total = EpisodeCounts()
    for e in episodes:
        total.add(e)
    return total


def macro_scores(episodes: Iterable[EpisodeCounts]) -> dict[str, Any]:
    """Official macro P / R / F1 in percent over the pooled counts, plus per-type scores and
    the micro F1 (``get_f1``, percent) for reference. Raises when no type has a gold fact (the
    official code then divides by zero)."""
    total = pool(episodes)
    per_type: dict[str, dict[str, float]] = {}
    for r, (tp, fp, fn) in total.counts.items():
        if tp + fn == 0:
            continue
        p = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn)
        f = 2 * p * rec / (p + rec) if p + rec else 0.0
        per_type[r] = {"precision": 100 * p, "recall": 100 * rec, "f1": 100 * f, "tp": tp, "fp": fp, "fn": fn,
                       "support": tp + fn}
    if not per_type:
        raise ValueError("no relation type has a gold fact: macro F1 is undefined")
    n = len(per_type)
    tp = sum(v[0] for v in total.counts.values())
    fp = sum(v[1] for v in total.counts.values())
    fn = sum(v[2] for v in total.counts.values())
    mp = tp / (tp + fp) if tp + fp else 0.0
    mr = tp / (tp + fn) if tp + fn else 0.0
    return {
        "macro_precision": sum(v["precision"] for v in per_type.values()) / n,
        "macro_recall": sum(v["recall"] for v in per_type.values()) / n,
        "macro_f1": sum(v["f1"] for v in per_type.values()) / n,
        "micro_f1": 100 * (2 * mp * mr / (mp + mr) if mp + mr else 0.0),
        "per_type": per_type,
    }


def _macro_f1_rows(counts: np.ndarray) -> np.ndarray:
    """Macro F1 (percent) of each row of ``[N, T, 3]`` pooled counts, skipping types without
    gold in that row (vectorised :func:`macro_scores`)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    p = np.divide(tp, tp + fp, out=np.zeros(tp.shape, float), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros(tp.shape, float), where=(tp + fn) > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros(tp.shape, float), where=(p + r) > 0)
    has = (tp + fn) > 0
    return 100 * (f * has).sum(-1) / np.maximum(has.sum(-1), 1)


def _count_array(episodes: Sequence[EpisodeCounts], types: list[str]) -> np.ndarray:
    """``[E, T*3]`` float counts of ``episodes`` over ``types`` (absent types are zeros)."""
    col = {r: i for i, r in enumerate(types)}
    arr = np.zeros((len(episodes), len(types), 3), dtype=np.int64)
    for i, e in enumerate(episodes):
        for r, v in e.counts.items():
            arr[i, col[r]] = v
    return arr.reshape(len(episodes), -1).astype(np.float64)


def _bootstrap_macro_f1(arms: Sequence[Sequence[EpisodeCounts]], resamples: int, seed: int) -> list[np.ndarray]:
    """Macro F1 of every arm under the same ``resamples`` episode resamples (one weight matrix
    for all arms, so their differences are paired)."""
    n = len(arms[0])
    if not n or any(len(a) != n for a in arms):
        raise ValueError("every arm needs the same, non-zero number of episodes")
    types = sorted({r for arm in arms for e in arm for r in e.counts})
    flats = [_count_array(arm, types) for arm in arms]
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in arms]
    for s in range(0, resamples, 500):  # weights [b, E] @ counts [E, T*3], 500 resamples at a time
        b = min(500, resamples - s)
        weights = rng.multinomial(n, np.full(n, 1 / n), size=b)
        for k, flat in enumerate(flats):
            out[k].append(_macro_f1_rows((weights @ flat).reshape(b, len(types), 3)))
    return [np.concatenate(o) for o in out]


def paired_bootstrap_difference(
    episodes: Sequence[EpisodeCounts], baseline: Sequence[EpisodeCounts], *, resamples: int = 2000,
    level: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """Percentile interval of macro F1(``episodes``) - macro F1(``baseline``), in points, with
    both scored on the same resampled episodes (``episodes[i]`` and ``baseline[i]`` are one
    episode). Why paired: two methods on the same 3,000 episodes share most of their variance,
    so the interval of the difference is much narrower than either interval alone."""
    a, b = _bootstrap_macro_f1([episodes, baseline], resamples, seed)
    dist = a - b
    alpha = (1 - level) / 2
    return {
        "difference": macro_scores(episodes)["macro_f1"] - macro_scores(baseline)["macro_f1"],
        "low": float(np.quantile(dist, alpha)), "high": float(np.quantile(dist, 1 - alpha)),
        "level": level, "resamples": resamples, "method": "paired percentile bootstrap over episodes",
    }


def bootstrap_interval(
    episodes: Sequence[EpisodeCounts], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Percentile bootstrap interval of the macro F1 (percent), resampling whole episodes."""
    if not episodes:
        raise ValueError("no episodes")
    (dist,) = _bootstrap_macro_f1([episodes], resamples, seed)
    alpha = (1 - level) / 2
    return {
        "low": float(np.quantile(dist, alpha)), "high": float(np.quantile(dist, 1 - alpha)),
        "level": level, "resamples": resamples, "std": float(dist.std(ddof=1)) if len(dist) > 1 else 0.0,
        "method": "percentile bootstrap over episodes",
    }
