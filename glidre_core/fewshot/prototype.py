"""Prototype few-shot relation classification (``AdaptationRecipe(method="prototype")``).

A training-free alternative to fine-tuning the heads (:class:`~.adapt.HeadAdapter`'s
``finetune``), in the style of prototypical few-shot relation extraction (Snell et al., 2017;
FREDo's TPN baseline, Popovic & Färber, 2022):

1. **Pair vectors.** Every ordered entity pair of a document gets the model's pair vector ``r``
   (:meth:`glidre_core.inference.Predictor.pair_representations`: the pair FFN's output, whose
   dot product with a label embedding is the model's relation logit). The model is not changed.
2. **Candidates** (``candidates``, ``max_gap``; :mod:`glidre_core.fewshot.candidates`).
   ``same_sentence``: only pairs whose entities have a mention in a common sentence are scored
   (by ``sent_id``, which DocRED-format data has; other documents are split into sentences by
   a rule, :func:`glidre_core.fewshot.candidates.mention_sentences`), and with ``max_gap`` only those with
   two such mentions at most that many words apart; the others get probability 0 and are left
   out of the support's NOTA pairs and mean. ``all``: every ordered pair.
3. **Support vectors.** Per relation type, the annotated (head, tail) pairs of that type are its
   positives; candidate pairs with no relation of the episode are NOTA ("none of the above").
   With ``center``, the mean vector of the support's candidate and positive pairs is subtracted
   from every vector (support and query) first; then all vectors are unit-normalised.
4. **Type score** of a query pair: ``s_t = mix * pos_t + (1 - mix) * cos(r, label_t)`` with
   ``pos_t`` = the cosine with the type's prototype (the normalised mean of its positives,
   ``positive="mean"``) or with its nearest positive (``positive="nearest"``), and ``label_t``
   the label embedding of the type's name. With ``context_weight = c > 0``, ``pos_t`` is
   ``(1 - c) * pos_t + c * ctx_t``, ``ctx_t`` the same cosine over *context vectors*: the mean
   word vector of the words between the pair's closest same-sentence mentions ("a parser
   **for** tagging", "parsing **and** tagging"), centred and normalised like the pair vectors.
   The pair vector pools the two entities; what links them is often in those words.
5. **NOTA score** ``s_nota``: ``mean`` = the cosine with the normalised mean of the NOTA vectors;
   ``nearest`` = the largest cosine with any NOTA vector; ``none`` = 0 (the margin is then an
   absolute threshold on ``s_t``).
6. **Direction** (``direction="support"``): a type is predicted only on pairs in a text order
   (head first or tail first) that its support positives show; a type whose positives show
   both, or none, keeps both. SciERC's CONJUNCTION and COMPARE facts mostly run in text order.
7. **Decision.** The pair has type ``t`` when ``s_t > s_nota + margin``: the probability reported
   is ``sigmoid((s_t - s_nota - margin) / temperature)``, decided at the recipe's threshold (0.5 by
   default for this method, i.e. exactly the margin rule). ``single_label`` keeps at most the
   best type per pair.

The values (``candidates``, ``center``, ``positive``, ``nota``, ``prototype_mix``, ``margin``,
...) were chosen on the FREDo dev slice in two steps (``benchmarks/fredo_prototype_dev.py``): the pair
rules and scoring options (-> ``benchmarks/results/fredo_prototype_dev_direction.json``), then the
context weight with the rules fixed and the scoring options crossed again (``--grid context`` ->
``benchmarks/results/fredo_prototype_dev_context.json``: 0.5, nearest positive, mean NOTA, mix 0.75,
one type per pair, margin -0.24; dev macro F1 12.08 against 10.69 without context vectors).

Everything after the pair vectors is numpy on small matrices (an episode's support has a few
hundred pairs), so an episode costs its documents' encoder passes, once per document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

from glidre_core.documents import Document
from glidre_core.fewshot.candidates import Geometry, direction_allows, entity_rules, support_directions

if TYPE_CHECKING:
    from glidre_core.fewshot.adapt import AdaptationRecipe
    from glidre_core.inference import PairVectors, RelationScores
    from glidre_core.modeling.label_encoder import LabelEmbeddings


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


#: the margin given to pairs that are not candidates (probability ~0 at any temperature)
NOT_A_CANDIDATE = -10.0


def pair_targets(pairs: "PairVectors", doc: Document, labels: Sequence[str]) -> np.ndarray:
    """``[P, R]`` booleans: pair ``p`` of ``pairs`` is annotated with ``labels[r]`` in ``doc``.
    Relations whose label is not in ``labels`` are ignored (their pairs count as NOTA)."""
    col = {lab: r for r, lab in enumerate(labels)}
    ids = pairs.prepared.entity_ids
    row = {(ids[h], ids[t]): p for p, (h, t) in enumerate(zip(pairs.heads, pairs.tails))}
    out = np.zeros((len(pairs.heads), len(labels)), dtype=bool)
    for rel in doc.relations:
        p, r = row.get((rel.head, rel.tail)), col.get(rel.label)
        if p is not None and r is not None:
            out[p, r] = True
    return out


class PairRules(NamedTuple):
    """What the pair rules say about each pair of a document (:func:`pair_rules`)."""

    #: ``[P]`` booleans: the pairs the candidate rule (and ``max_gap``) let be scored
    candidates: np.ndarray
    #: ``[P]`` int8 when asked for: +1 when the head comes first in the text (by their closest
    #: same-sentence mentions), -1 when the tail does, 0 when they share no sentence
    orders: np.ndarray | None
    #: ``[P, D]`` when asked for: the mean word vector of the words between those closest
    #: mentions (zeros when they touch or share no sentence)
    contexts: np.ndarray | None


def between_vectors(pairs: "PairVectors", geometry: Geometry, h: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[P, D]`` context vectors of the pairs of ``pairs`` (``h``/``t``: their entity indices in
    the document ``geometry`` describes): the mean of ``pairs.words`` over the words strictly
    between the pair's closest same-sentence mentions. One cumulative sum per document, no
    loop over pairs."""
    if pairs.words is None:
        raise ValueError("context vectors need the document's word vectors (pair_representations(words=True))")
    words = np.asarray(pairs.words, dtype=np.float64)
    spans = pairs.prepared.mention_spans  # per entity (prepared order = the document's), [w0, w1) per mention
    flat = np.array([s for ent in spans for s in ent], dtype=np.int64).reshape(-1, 2)
    offset = np.cumsum([0] + [len(ent) for ent in spans])[:-1].astype(np.int64)
    ph, pt = np.asarray(pairs.heads, dtype=np.int64), np.asarray(pairs.tails, dtype=np.int64)
    order = geometry.order[h, t]
    if not len(flat) or not len(ph):
        return np.zeros((len(ph), words.shape[-1]), np.float32)
    sh = flat[offset[ph] + np.maximum(geometry.closest[h, t, 0], 0)]
    st = flat[offset[pt] + np.maximum(geometry.closest[h, t, 1], 0)]
    lo = np.where(order > 0, sh[:, 1], st[:, 1])
    hi = np.maximum(np.where(order > 0, st[:, 0], sh[:, 0]), lo)
    lo, hi = np.where(order == 0, 0, lo), np.where(order == 0, 0, hi)
    cum = np.concatenate([np.zeros((1, words.shape[-1])), np.cumsum(words, axis=0)])
    return ((cum[hi] - cum[lo]) / np.maximum(hi - lo, 1)[:, None]).astype(np.float32)


def pair_rules(pairs: "PairVectors", doc: Document, rule: str, max_gap: int | None = None,
               orders: bool = False, contexts: bool = False) -> PairRules:
    """The :class:`PairRules` of the pairs of ``pairs`` from one geometry pass
    (:func:`glidre_core.fewshot.candidates.entity_rules`): candidates always, text orders and
    context vectors (which need ``pairs.words``) when asked for."""
    allowed, geometry = entity_rules(doc, rule, max_gap, orders or contexts)
    index = {ent.id: i for i, ent in enumerate(doc.entities)}
    ids = pairs.prepared.entity_ids
    h = np.array([index[ids[i]] for i in pairs.heads], dtype=np.int64)
    t = np.array([index[ids[i]] for i in pairs.tails], dtype=np.int64)
    return PairRules(allowed[h, t].astype(bool),
                     geometry.order[h, t].astype(np.int8) if orders and geometry is not None else None,
                     between_vectors(pairs, geometry, h, t) if contexts and geometry is not None else None)


@dataclass
class Prototypes:
    """An episode's classifier: the support's positives per type, its NOTA vectors, the label
    vectors, the centering vector, and the recipe's decision settings."""

    labels: list[str]
    types: np.ndarray  # [R, D] unit prototypes (normalised mean of the unit positives)
    examples: list[np.ndarray]  # per type, its unit positives [n_r, D] (the prototype when n_r = 0)
    label_vectors: np.ndarray  # [R, D] unit label embeddings
    nota: np.ndarray  # [K, D] unit NOTA vectors of the support (K may be 0)
    center: np.ndarray  # [D] subtracted before normalising (zeros without ``center``)
    positives: list[int]  # support positives per type
    mix: float = 1.0
    positive_rule: str = "mean"
    nota_rule: str = "mean"
    margin: float = 0.0
    temperature: float = 0.05
    single_label: bool = False
    candidates: str = "all"
    max_gap: int | None = None
    direction: str = "any"
    #: [R, 2] booleans: type r may be predicted on head-first (column 0) / tail-first (column 1) pairs
    directions: np.ndarray | None = None
    #: the decision threshold on :meth:`probabilities` (the recipe's; 0.5 = the margin rule)
    threshold: float = 0.5
    #: weight of the context vectors (the words between the mentions) in a type's support score
    context_weight: float = 0.0
    context_types: np.ndarray | None = None  # [R, D] unit context prototypes (zeros without positives)
    context_examples: list[np.ndarray] | None = None  # per type, its unit positive contexts
    context_center: np.ndarray | None = None  # [D] subtracted from contexts before normalising
    context_nota: np.ndarray | None = None  # [K, D] unit contexts of the NOTA vectors

    @classmethod
    def from_support(cls, support: Sequence[tuple["PairVectors", Document]], labels: Sequence[str],
                     label_vectors: np.ndarray, recipe: "AdaptationRecipe") -> "Prototypes":
        """Prototypes of ``labels`` from the support documents' pair vectors and annotations.
        A type without a positive pair gets its label embedding as its only example."""
        labels = list(labels)
        dim = np.asarray(label_vectors).shape[-1]
        use_ctx = recipe.context_weight > 0
        vecs, targets, keep, orders, ctxs = [], [], [], [], []
        for pv, doc in support:
            if not len(pv.heads):
                continue
            tgt = pair_targets(pv, doc, labels)
            vecs.append(np.asarray(pv.vectors, dtype=np.float32))
            targets.append(tgt)
            rules = pair_rules(pv, doc, recipe.candidates, recipe.max_gap, recipe.direction == "support", use_ctx)
            keep.append(rules.candidates | tgt.any(1))  # positives always count
            orders.append(rules.orders if rules.orders is not None else np.zeros(len(tgt), np.int8))
            if use_ctx:
                ctxs.append(rules.contexts)
        raw = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
        tgt = np.concatenate(targets) if targets else np.zeros((0, len(labels)), bool)
        kept = np.concatenate(keep) if keep else np.zeros(0, bool)
        order = np.concatenate(orders) if orders else np.zeros(0, np.int8)
        p_idx, r_idx = tgt.nonzero()
        directions = support_directions(len(labels), [(int(r), int(order[p])) for p, r in zip(p_idx, r_idx)])
        raw, tgt = raw[kept], tgt[kept]
        mu = raw.mean(0) if recipe.center and len(raw) else np.zeros(dim, np.float32)
        allv = unit(raw - mu)
        lab = unit(label_vectors)
        protos, examples, counts = [], [], []
        for r in range(len(labels)):
            pos = allv[tgt[:, r]]
            counts.append(int(len(pos)))
            protos.append(unit(pos.mean(0)) if len(pos) else lab[r])
            examples.append(pos if len(pos) else lab[r : r + 1])
        context: dict[str, Any] = {}
        if use_ctx:
            craw = (np.concatenate(ctxs) if ctxs else np.zeros((0, dim), np.float32))[kept]
            cmu = craw.mean(0) if recipe.center and len(craw) else np.zeros(dim, np.float32)
            allc = unit(craw - cmu)
            cpos = [allc[tgt[:, r]] for r in range(len(labels))]
            context = {"context_weight": recipe.context_weight, "context_center": cmu.astype(np.float32),
                       "context_nota": allc[~tgt.any(1)],
                       "context_types": np.stack([unit(c.mean(0)) if len(c) else np.zeros(dim, np.float32)
                                                  for c in cpos]) if cpos else np.zeros((0, dim), np.float32),
                       "context_examples": [c if len(c) else np.zeros((1, dim), np.float32) for c in cpos]}
        return cls(labels, np.stack(protos) if protos else np.zeros((0, dim), np.float32), examples, lab,
                   allv[~tgt.any(1)], mu.astype(np.float32), counts, mix=recipe.prototype_mix,
                   positive_rule=recipe.positive, nota_rule=recipe.nota, margin=recipe.margin,
                   temperature=recipe.temperature, single_label=recipe.single_label, candidates=recipe.candidates,
                   max_gap=recipe.max_gap, direction=recipe.direction, directions=directions,
                   threshold=float(recipe.threshold if recipe.threshold is not None else 0.5), **context)

    def _unit(self, vectors: np.ndarray) -> np.ndarray:
        return unit(np.asarray(vectors, dtype=np.float32) - self.center)

    def _support_scores(self, v: np.ndarray, types: np.ndarray, examples: list[np.ndarray]) -> np.ndarray:
        """``[P, R]`` cosine of the unit rows ``v`` with each type's prototype (``mean``) or its
        nearest example (``nearest``)."""
        if self.positive_rule == "mean":
            return v @ types.T
        if self.positive_rule == "nearest":
            return np.stack([(v @ ex.T).max(1) for ex in examples], 1) if examples else v @ types.T
        raise ValueError(f"unknown positive rule {self.positive_rule!r}")

    def type_scores(self, vectors: np.ndarray, contexts: np.ndarray | None = None) -> np.ndarray:
        """``[P, R]`` type scores ``s_t`` of the pair vectors ``vectors`` ``[P, D]``: ``mix`` times
        the support score (with ``context_weight``, that share on the ``contexts`` ``[P, D]``, the
        pairs' :attr:`PairRules.contexts`), plus ``1 - mix`` times the label-embedding cosine."""
        v = self._unit(vectors)
        pos = self._support_scores(v, self.types, self.examples)
        if self.context_weight > 0:
            if contexts is None or self.context_types is None or self.context_examples is None:
                raise ValueError("these prototypes use context vectors: give the pairs' contexts "
                                 "(pair_rules(..., contexts=True))")
            c = unit(np.asarray(contexts, dtype=np.float32) - self.context_center)
            pos = (1.0 - self.context_weight) * pos + self.context_weight * self._support_scores(
                c, self.context_types, self.context_examples)
        return self.mix * pos + (1.0 - self.mix) * (v @ self.label_vectors.T)

    def _nota_scores(self, v: np.ndarray, nota: np.ndarray) -> np.ndarray:
        if self.nota_rule == "mean":
            return v @ unit(nota.mean(0))
        if self.nota_rule == "nearest":
            return (v @ nota.T).max(1)
        raise ValueError(f"unknown NOTA rule {self.nota_rule!r}")

    def nota_scores(self, vectors: np.ndarray, contexts: np.ndarray | None = None) -> np.ndarray:
        """``[P]`` NOTA scores (0 when the support has no NOTA pair, or with ``nota="none"``),
        mixed with the contexts' as the type scores are (``context_weight``)."""
        v = self._unit(vectors)
        if self.nota_rule == "none" or len(self.nota) == 0:
            return np.zeros(len(v), np.float32)
        score = self._nota_scores(v, self.nota)
        if self.context_weight > 0:
            if contexts is None or self.context_nota is None:
                raise ValueError("these prototypes use context vectors: give the pairs' contexts "
                                 "(pair_rules(..., contexts=True))")
            c = unit(np.asarray(contexts, dtype=np.float32) - self.context_center)
            score = (1.0 - self.context_weight) * score + self.context_weight * self._nota_scores(c, self.context_nota)
        return score

    def margins(self, vectors: np.ndarray, candidates: np.ndarray | None = None,
                orders: np.ndarray | None = None, contexts: np.ndarray | None = None) -> np.ndarray:
        """``[P, R]`` ``s_t - s_nota - margin``: positive = the pair has the type. With
        ``direction="support"`` and the pairs' text ``orders`` (``[P]``, :func:`pair_rules`), a
        type is ruled out (:data:`NOT_A_CANDIDATE`) on pairs whose order its support positives
        never show. With ``single_label``, every type but the best remaining one of each pair is
        pushed below 0; pairs outside ``candidates`` (``[P]`` booleans, None = all) get
        :data:`NOT_A_CANDIDATE`. The arguments after ``vectors`` are :class:`PairRules`' fields
        (``margins(vectors, *pair_rules(...))``)."""
        d = self.type_scores(vectors, contexts) - self.nota_scores(vectors, contexts)[:, None] - self.margin
        if self.direction == "support" and self.directions is not None:
            if orders is None:
                raise ValueError("direction='support' needs the query pairs' text orders (pair_rules)")
            d = np.where(direction_allows(self.directions, orders), d, NOT_A_CANDIDATE)
        if self.single_label and d.size:
            best = d.argmax(1)
            rest = np.ones_like(d, dtype=bool)
            rest[np.arange(len(d)), best] = False
            d = np.where(rest, np.minimum(d, -abs(self.margin) - 1.0), d)
        if candidates is not None:
            d = np.where(np.asarray(candidates, dtype=bool)[:, None], d, NOT_A_CANDIDATE)
        return d.astype(np.float32)

    def probabilities(self, vectors: np.ndarray, candidates: np.ndarray | None = None,
                      orders: np.ndarray | None = None, contexts: np.ndarray | None = None) -> np.ndarray:
        """``[P, R]`` ``sigmoid(margins / temperature)`` (0.5 = on the decision boundary)."""
        z = np.clip(self.margins(vectors, candidates, orders, contexts) / self.temperature, -80, 80)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


    def pair_probabilities(self, pairs: "PairVectors") -> np.ndarray:
        """``[P, R]`` :meth:`probabilities` of one document's pair vectors, with the pair rules
        (candidates, text orders) read from the document itself: the one scoring path of
        saved prototypes (:class:`glidre_core.inference.Predictor`) and of the FREDo runner."""
        rules = pair_rules(pairs, pairs.prepared.doc, self.candidates, self.max_gap, self.direction == "support",
                           self.context_weight > 0)
        return self.probabilities(pairs.vectors, *rules)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``prototypes.safetensors`` (the vectors) and ``prototypes.json`` (labels and
        decision settings) into ``directory`` (a model directory: ``from_pretrained`` attaches
        them to the model it loads)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dim = self.types.shape[1] if self.types.ndim == 2 else len(self.center)
        tensors = {
            "types": self.types, "label_vectors": self.label_vectors, "center": self.center,
            "nota": self.nota.reshape(-1, dim),
            "examples": np.concatenate(self.examples) if self.examples else np.zeros((0, dim), np.float32),
            "example_counts": np.array([len(e) for e in self.examples], dtype=np.int64),
            "directions": (self.directions if self.directions is not None
                           else np.ones((len(self.labels), 2), bool)).astype(np.uint8),
        }
        if self.context_weight > 0:
            assert self.context_types is not None and self.context_examples is not None \
                and self.context_nota is not None
            tensors.update({"context_types": self.context_types, "context_center": self.context_center,
                            "context_examples": np.concatenate(self.context_examples),
                            "context_nota": self.context_nota.reshape(-1, dim)})
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(directory / PROTOTYPES_WEIGHTS),
                  metadata={"format": "np", "glidre": "prototypes"})
        settings = {"format_version": 1, "labels": self.labels, "positives": self.positives,
                    **{k: getattr(self, k) for k in SETTINGS}}
        (directory / PROTOTYPES_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, dim: int | None = None) -> "Prototypes":
        """The prototypes :meth:`save` wrote, checked: every array present with consistent
        shapes (and vectors of width ``dim`` when given: the model's pair-vector width)."""
        directory = Path(directory)
        settings = json.loads((directory / PROTOTYPES_CONFIG).read_text())
        if settings.get("format_version") != 1:
            raise ValueError(f"{directory / PROTOTYPES_CONFIG}: unknown format_version {settings.get('format_version')!r}")
        arrays = load_file(str(directory / PROTOTYPES_WEIGHTS))
        missing = sorted(set(ARRAYS) - set(arrays))
        if missing:
            raise ValueError(f"{directory / PROTOTYPES_WEIGHTS}: missing arrays {missing}")
        labels = list(settings["labels"])
        r, d = len(labels), arrays["types"].shape[-1]
        counts = arrays["example_counts"]
        expected = {"types": (r, d), "label_vectors": (r, d), "center": (d,), "example_counts": (r,),
                    "directions": (r, 2), "examples": (int(counts.sum()), d)}
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(f"{directory / PROTOTYPES_WEIGHTS}: {name} has shape {arrays[name].shape}, "
                                 f"expected {shape} ({r} labels)")
        if arrays["nota"].ndim != 2 or arrays["nota"].shape[1] != d:
            raise ValueError(f"{directory / PROTOTYPES_WEIGHTS}: nota has shape {arrays['nota'].shape}, expected (K, {d})")
        if dim is not None and d != dim:
            raise ValueError(f"{directory}: prototypes have width {d}, the model's pair vectors {dim}")
        unknown = sorted(set(settings) - set(SETTINGS) - {"format_version", "labels", "positives"})
        if unknown:
            raise ValueError(f"{directory / PROTOTYPES_CONFIG}: unknown settings {unknown}")
        examples = np.split(arrays["examples"], np.cumsum(counts)[:-1]) if r else []
        context: dict[str, Any] = {}
        if settings.get("context_weight", 0.0) > 0:
            n_ctx = [max(int(c), 1) for c in settings["positives"]]  # a type without positives: one zero row
            shapes = {"context_types": (r, d), "context_center": (d,), "context_examples": (sum(n_ctx), d),
                      "context_nota": arrays["nota"].shape}
            for name, shape in shapes.items():
                if name not in arrays or arrays[name].shape != shape:
                    raise ValueError(f"{directory / PROTOTYPES_WEIGHTS}: {name} missing or not of shape {shape} "
                                     "(context_weight > 0)")
            context = {"context_types": arrays["context_types"], "context_center": arrays["context_center"],
                       "context_nota": arrays["context_nota"],
                       "context_examples": list(np.split(arrays["context_examples"], np.cumsum(n_ctx)[:-1]))
                       if r else []}
        return cls(labels, arrays["types"], list(examples), arrays["label_vectors"], arrays["nota"], arrays["center"],
                   [int(x) for x in settings["positives"]], directions=arrays["directions"].astype(bool),
                   **{k: settings[k] for k in SETTINGS if k in settings}, **context)


#: file names of saved prototypes (beside a model's config.json / model.safetensors)
PROTOTYPES_WEIGHTS = "prototypes.safetensors"
PROTOTYPES_CONFIG = "prototypes.json"
#: the arrays of PROTOTYPES_WEIGHTS and the decision settings of PROTOTYPES_CONFIG
ARRAYS = ("types", "label_vectors", "center", "nota", "examples", "example_counts", "directions")
SETTINGS = ("mix", "positive_rule", "nota_rule", "margin", "temperature", "single_label", "candidates", "max_gap",
            "direction", "threshold", "context_weight")


def has_prototypes(directory: str | Path) -> bool:
    """Whether ``directory`` holds saved prototypes (:meth:`Prototypes.save`)."""
    return (Path(directory) / PROTOTYPES_CONFIG).exists()


class PrototypePredictor:
    """The part of :class:`glidre_core.inference.Predictor` the FREDo runner uses
    (``relations``, ``thresholds``, ``score_relations``), scoring with :class:`Prototypes`.

    ``pair_vectors(docs)`` gives the query documents' pair vectors (the adapter's cache)."""

    def __init__(self, prototypes: Prototypes, relations: "LabelEmbeddings", threshold: float,
                 pair_vectors: Callable[[Sequence[Document]], list["PairVectors"]]):
        self.prototypes = prototypes
        self.relations = relations
        self.thresholds = np.full(len(relations.labels), threshold, dtype=np.float32)
        self._pair_vectors = pair_vectors

    def score_relations(self, docs: Sequence[Document]) -> list["RelationScores"]:
        from glidre_core.inference import RelationScores

        return [RelationScores(pv.prepared, pv.heads, pv.tails, self.prototypes.pair_probabilities(pv))
                for pv in self._pair_vectors(docs)]
