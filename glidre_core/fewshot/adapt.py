"""The few-shot adaptation recipe: prototypes (the default) or a few epochs of the heads.

Two methods (``AdaptationRecipe.method``):

* ``prototype`` (the default: on the FREDo dev slice, with the current default model, macro F1
  10.69 against 1.45 for the fine-tuning defaults; 10.21 for the no-model baseline with the same
  rules, "every label for every same-sentence pair within 2 words, in the text orders the
  support shows", so most of the score is those rules, :mod:`glidre_core.fewshot.candidates`):
  nothing is trained; query pairs are scored against the support documents' pair vectors
  (:mod:`glidre_core.fewshot.prototype`, chosen with ``benchmarks/fredo_prototype_dev.py``).
  It changes no weight; ``glidre adapt`` saves the prototypes beside the model
  (:meth:`~glidre_core.fewshot.prototype.Prototypes.save`), and every predictor over the loaded
  model scores those labels with them.
* ``finetune``, described below.

Why fine-tuning has this shape. A few-shot episode has 1 to 3 labelled documents. Fine-tuning the document
encoder on that little data is slow on a CPU and easy to overfit, while the relation decision is
made by small heads on top (the pair scorer and the label encoder's FFN). So the recipe freezes
the whole document encoder and the label encoder's transformer, runs the encoder **once** per
document (:class:`~glidre_core.modeling.cache.EncoderCache`, ``mode="encoded"``), and trains
only the parameters named by ``AdaptationRecipe.train`` for ``epochs`` full-batch steps with a
constant learning rate, on the model's own training loss
(:func:`glidre_core.modeling.targets.joint_loss`, relation term only: focal loss for the default
model). Each step costs one pass of the heads over the support documents' entity pairs.

The fine-tuning defaults (the label FFN alone, lr 1e-4, 10 epochs, threshold 0.25) had the best macro F1 on
the 50 FREDo dev episodes of a grid of {pair scorer + label FFN, label FFN} x lr {1e-4, 3e-4,
1e-3} x epochs {5, 10, 20, 40} x 23 thresholds. The best point of each of the six trajectories
scored 1.42 to 1.70, against 1.40 for predicting every pair on those episodes: the choice is
weakly determined (see the README section "Few-shot").

The same :class:`HeadAdapter` serves the FREDo evaluation (adapt, predict, restore: the weights
go back to the snapshot after every episode) and ``glidre adapt`` (adapt once, save). Inference
goes through :class:`glidre_core.inference.Predictor` only, with the adapter's encoder cache.

The recipe's values were chosen on the FREDo dev slice (``benchmarks/fredo_recipe_dev.py``,
``benchmarks/results/fredo_recipe_dev.json``; the protocol is in the README section "Few-shot"),
never on reported episodes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from glidre_core.documents import Document
from glidre_core.modeling.cache import EncoderCache
from glidre_core.modeling.targets import joint_loss, training_batch

if TYPE_CHECKING:
    from glidre_core.fewshot.prototype import PrototypePredictor, Prototypes
    from glidre_core.inference import PairVectors, Predictor
    from glidre_core.modeling.label_encoder import LabelEmbeddings
    from glidre_core.modeling.glidre import GLiDRE

logger = logging.getLogger(__name__)

#: parameter-name prefixes the recipe may train (the document encoder stays frozen and cached)
TRAINABLE_PREFIXES: tuple[str, ...] = ("scorer.", "label_encoder.ffn.", "label_encoder.projection.", "word_projection.")


class AdaptationRecipe(BaseModel):
    """How a model is adapted to a few labelled documents (values chosen on FREDo dev episodes).

    The prototype defaults are the best point of ``benchmarks/fredo_prototype_dev.py --grid
    context`` with the embedded default model of 2026-12-03 (FREDo cross-domain dev episodes
    0-49): support only (``prototype_mix`` 1), the type's support score from the words between
    the pair's mentions alone (``context_weight`` 1), nearest positive, no NOTA comparison and an
    absolute cosine margin of 0.12, one type per pair. With that model the label embedding and
    the pair vectors did not add to the context vectors on dev; they did with the earlier
    weights (0.75 / 0.5 / mean NOTA / margin -0.24, README "FREDo").

    ``method`` picks the fields that apply: ``epochs`` .. ``train`` for ``finetune``,
    ``prototype_mix`` .. ``single_label`` for ``prototype``; setting a field of the other method
    is an error. ``threshold`` defaults to 0.25 for ``finetune`` and 0.5 for ``prototype`` (its
    probabilities put the margin at 0.5)."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=0, description="full-batch steps over the support documents (0 = no adaptation)")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate, constant (no schedule: a few dozen steps)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(10.0, gt=0)
    train: list[str] = Field(
        default_factory=lambda: ["label_encoder.ffn."],
        description="parameter-name prefixes to train; the document encoder is frozen (its outputs are cached)",
    )
    threshold: float | None = Field(
        0.25, gt=0, lt=1, description="decision threshold after adaptation; None = the model's stored threshold",
    )
    seed: int = Field(13, description="torch seed of the dropout masks (the FREDo runner adds the episode id)")
    method: Literal["finetune", "prototype"] = Field(
        "prototype", description="finetune: train the heads on the support documents (the fields above); "
        "prototype: no training, query pairs are scored against support prototypes (the fields below, "
        ":mod:`glidre_core.fewshot.prototype`)",
    )
    prototype_mix: float = Field(1.0, ge=0, le=1, description="prototype: weight of the support prototype in a "
                                 "type's score, the rest on the label embedding (1 = support only)")
    candidates: Literal["all", "same_sentence"] = Field(
        "same_sentence", description="prototype: the pairs scored: every ordered pair, or pairs whose entities share a "
        "sentence (sent_id, else a rule-based split); the others are never predicted",
    )
    max_gap: int | None = Field(
        2, ge=0, description="prototype: with same_sentence, score only pairs with two mentions in one sentence at "
        "most this many words apart (None = any distance; glidre_core.fewshot.candidates)",
    )
    direction: Literal["any", "support"] = Field(
        "support", description="prototype: any = a type may hold in either text order; support = only in the text "
        "orders (head first / tail first) its support positives show",
    )
    center: bool = Field(True, description="prototype: subtract the mean of the support's pair vectors first")
    positive: Literal["mean", "nearest"] = Field(
        "nearest", description="prototype: a type's support score = cosine with the mean of its positives (mean) "
        "or with its nearest positive (nearest)",
    )
    nota: Literal["mean", "nearest", "none"] = Field(
        "none", description="prototype: NOTA score = cosine with the mean NOTA vector of the support (mean), "
        "with the nearest NOTA vector (nearest), or 0 (none: the margin is an absolute cosine threshold)",
    )
    margin: float = Field(0.12, ge=-2, le=2, description="prototype: a pair has type t when s_t > s_nota + margin")
    temperature: float = Field(0.05, gt=0, description="prototype: probability = sigmoid((s_t - s_nota - margin) / "
                               "temperature); the decision does not depend on it at threshold 0.5")
    single_label: bool = Field(True, description="prototype: at most one type (the best) per pair")
    context_weight: float = Field(
        1.0, ge=0, le=1, description="prototype: share of a type's support score taken from the words between "
        "the pair's closest mentions (their mean word vector against the type's positives'), the rest from the "
        "pair vectors",
    )

    @field_validator("train")
    @classmethod
    def _heads_only(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("train must name at least one parameter prefix")
        bad = [p for p in v if not p.startswith(TRAINABLE_PREFIXES)]
        if bad:
            raise ValueError(f"train prefixes {bad} are outside the heads {TRAINABLE_PREFIXES}: "
                             "the document encoder stays frozen so its outputs can be cached")
        return v

    @model_validator(mode="after")
    def _method_fields(self) -> "AdaptationRecipe":
        """Each method's fields stay at their defaults under the other method (a value that
        would be silently ignored is an error); prototype's threshold defaults to 0.5."""
        other = FINETUNE_FIELDS if self.method == "prototype" else PROTOTYPE_FIELDS
        changed = sorted(f for f in other if getattr(self, f) != type(self).model_fields[f].get_default(
            call_default_factory=True))
        if changed:
            raise ValueError(f"{changed} do not apply to method={self.method!r}")
        if self.max_gap is not None and self.candidates != "same_sentence":
            if "max_gap" in self.model_fields_set:
                raise ValueError("max_gap needs candidates='same_sentence' (the gap is counted within a sentence)")
            self.max_gap = None  # the default gap goes with the default rule; candidates=all means every pair
        if self.method == "prototype":
            if "threshold" not in self.model_fields_set:
                self.threshold = 0.5  # the margin rule itself: sigmoid(0) = 0.5
            elif self.threshold is None:
                raise ValueError("method='prototype' needs a threshold on its own probabilities "
                                 "(the model's stored threshold is for its logits)")
        return self


#: recipe fields that only the prototype method reads, and those only fine-tuning reads
PROTOTYPE_FIELDS = ("prototype_mix", "candidates", "max_gap", "direction", "center", "positive", "nota",
                    "margin", "temperature", "single_label", "context_weight")
FINETUNE_FIELDS = ("epochs", "lr", "weight_decay", "max_grad_norm", "train")


class HeadAdapter:
    """Runs an :class:`AdaptationRecipe` on a model, and can undo it.

    Taking a model over: every parameter outside ``recipe.train`` gets ``requires_grad=False``.
    A snapshot of the trained parameters is kept, so :meth:`reset` (and leaving
    :meth:`adapted`) restores the model exactly. Encoder outputs are cached per document id and
    shared by every adaptation and prediction of this adapter (documents must keep their ids
    and texts).
    """

    def __init__(self, model: "GLiDRE", recipe: AdaptationRecipe | None = None, batch_size: int = 8):
        self.model = model
        self.recipe = recipe or AdaptationRecipe()
        self.batch_size = batch_size
        self.params: dict[str, torch.nn.Parameter] = {}
        for name, param in model.named_parameters():
            train = name.startswith(tuple(self.recipe.train))
            param.requires_grad_(train)
            if train:
                self.params[name] = param
        if not self.params:
            raise ValueError(f"recipe.train={self.recipe.train} matches no parameter of the model")
        self._snapshot = {n: p.detach().clone() for n, p in self.params.items()}
        self.cache: EncoderCache | None = None
        self._pairs: dict[str, "PairVectors"] = {}  # doc id -> pair vectors of the model as it is
        self._labels: dict[tuple[str, ...], "LabelEmbeddings"] = {}  # label set -> its embeddings, likewise

    # -- encoder cache --------------------------------------------------------------------------
    def encode(self, docs: Sequence[Document]) -> EncoderCache:
        """The encoder cache, extended with the documents it lacks (one encoder pass each)."""
        missing = {d.doc_id: self.model.prepare(d) for d in docs
                   if self.cache is None or d.doc_id not in self.cache.entries}
        if self.cache is None:
            self.cache = EncoderCache(self.model, missing, "encoded", self.batch_size)
        elif missing:
            self.cache.entries.update(EncoderCache(self.model, missing, "encoded", self.batch_size).entries)
        return self.cache

    # -- prediction -----------------------------------------------------------------------------
    def predictor(self, labels: Sequence[str], threshold: float | None = None, adapted: bool = True) -> "Predictor":
        """A predictor over the model as it is now, with the cached encoder outputs. Threshold:
        ``threshold``, else (``adapted``) the recipe's, else the model's stored one."""
        if threshold is None and adapted:
            threshold = self.recipe.threshold
        return self.model.predictor(relation_labels=list(labels), threshold=threshold,
                                    batch_size=self.batch_size, encoder_cache=self.cache)

    # -- the prototype method -------------------------------------------------------------------
    def pair_vectors(self, docs: Sequence[Document]) -> list["PairVectors"]:
        """The pair vectors of ``docs`` (:meth:`Predictor.pair_representations`), cached per
        document id (label embeddings likewise, per label set); :meth:`adapt` and :meth:`reset`
        clear both caches (the weights change)."""
        missing = list({d.doc_id: d for d in docs if d.doc_id not in self._pairs}.values())
        if missing:
            self.encode(missing)
            pred = self.model.predictor(batch_size=self.batch_size, encoder_cache=self.cache)
            # fp32 heads: bf16 rounding depends on the batch and would move cosine decisions
            # with the word vectors: context prototypes read the words between two mentions
            for doc, pv in zip(missing, pred.pair_representations(missing, exact=True, words=True)):
                self._pairs[doc.doc_id] = pv
        return [self._pairs[d.doc_id] for d in docs]

    def prototypes(self, support: Sequence[Document], labels: Sequence[str]) -> "Prototypes":
        """The prototype classifier of ``labels`` from ``support`` (relations named by
        ``labels``; every other ordered pair is NOTA), with the recipe's settings."""
        from glidre_core.fewshot.prototype import Prototypes

        if not support:
            raise ValueError("prototypes need at least one support document")
        if not labels:
            raise ValueError("prototypes need at least one relation label")
        key = tuple(labels)
        if key not in self._labels:
            self._labels[key] = self.model.predictor(relation_labels=list(labels)).relations
        vectors = self._labels[key].vectors.detach().float().cpu().numpy()
        return Prototypes.from_support(list(zip(self.pair_vectors(support), support)), labels, vectors, self.recipe)

    def prototype_predictor(self, support: Sequence[Document], labels: Sequence[str],
                            threshold: float | None = None) -> "PrototypePredictor":
        """Scores of query documents against the prototypes of ``support`` (the model is not
        changed), decided at ``threshold`` (None = the recipe's)."""
        from glidre_core.fewshot.prototype import PrototypePredictor
        from glidre_core.modeling.label_encoder import LabelEmbeddings

        protos = self.prototypes(support, labels)
        thr = self.recipe.threshold if threshold is None else threshold
        return PrototypePredictor(protos, LabelEmbeddings(list(labels), torch.from_numpy(protos.types)), float(thr),
                                  self.pair_vectors)

    # -- adaptation -----------------------------------------------------------------------------
    def adapt(
        self,
        support: Sequence[Document],
        labels: Sequence[str],
        *,
        seed: int | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train the recipe's parameters on ``support`` (relations named by ``labels``; every
        other ordered pair of the documents' entities is a negative for every label). Returns
        the loss of each epoch. ``on_epoch(epoch, loss)`` runs after each step (dev sweeps
        score intermediate epochs from it). Leaves the model in eval mode."""
        recipe, model = self.recipe, self.model
        if recipe.method != "finetune":
            raise ValueError(f"method={recipe.method!r} trains nothing: use prototype_predictor()")
        if not support:
            raise ValueError("adaptation needs at least one support document")
        self._pairs.clear()
        self._labels.clear()
        if not labels:
            raise ValueError("adaptation needs at least one relation label")
        start = time.perf_counter()
        torch.manual_seed(recipe.seed if seed is None else seed)
        cache = self.encode(support)
        prepared = [model.prepare(d) for d in support]
        batch = cache.attach(training_batch(model, prepared, list(labels), None))
        params = list(self.params.values())
        # fused AdamW: one kernel for all tensors, half the time of a step on a CPU (measured)
        optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
        losses: list[float] = []
        model.train()
        try:
            for epoch in range(recipe.epochs):
                optimizer.zero_grad(set_to_none=True)
                out = model(batch, model.encode_labels(list(labels)))
                loss = joint_loss(model, batch, out)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                optimizer.step()
                losses.append(float(loss.detach()))
                if on_epoch is not None:
                    on_epoch(epoch + 1, losses[-1])
                    model.train()
        finally:
            model.eval()
        logger.debug("adapted %d params on %d docs, %d labels, %d epochs in %.2fs (loss %s -> %s)",
                     len(params), len(support), len(labels), recipe.epochs, time.perf_counter() - start,
                     f"{losses[0]:.4f}" if losses else "-", f"{losses[-1]:.4f}" if losses else "-")
        return losses

    def reset(self) -> None:
        """The trained parameters back to their values when the adapter was created."""
        self._pairs.clear()
        self._labels.clear()
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self._snapshot[name])

    @contextlib.contextmanager
    def adapted(self, support: Sequence[Document], labels: Sequence[str], *, seed: int | None = None,
                on_epoch: Callable[[int, float], None] | None = None) -> Iterator[list[float]]:
        """Adapt for the duration of the block (yields the epoch losses), then :meth:`reset`."""
        try:
            yield self.adapt(support, labels, seed=seed, on_epoch=on_epoch)
        finally:
            self.reset()
