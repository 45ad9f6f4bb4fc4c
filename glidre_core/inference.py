"""The inference layer: one :class:`Predictor` behind every caller.

The ``GLiDRE`` convenience methods, :mod:`glidre_core.evaluation`, the trainer's dev evaluation,
the Ray Data ``Extractor`` and the MLflow pyfunc all run inference through a
:class:`Predictor`. It fixes, once:

* the relation-label and entity-type embeddings (encoded in eval mode, without gradients: label
  embeddings computed in train mode would carry dropout noise);
* the per-label decision thresholds, the coreference mode, ``top_k`` and flat/nested decoding;
* eval mode and ``no_grad`` around every call, restoring the model's mode afterwards;
* for labels the model never trained on, when its config asks for it
  (``unseen_label_transfer``), the trained labels they borrow scores from: scored alongside,
  and mapped back inside the batch (:mod:`glidre_core.modeling.label_transfer`).

Documents are batched by similar size (sorted by entity count, then length, and returned in
input order), so padding stays small; each batch is one :meth:`GLiDRE.forward` and **one** copy
of its probabilities to the host, where decoding runs in numpy. The rows it returns are the
typed rows of :mod:`glidre_core.rows`.

Band candidates (for the LLM verify stage, :mod:`glidre_core.llm.verify`): with
``Predictor(candidate_band=(below, above))``, :meth:`Predictor.predict_with_candidates` and
:meth:`Predictor.extract_with_candidates` return, next to the usual rows, every (head, tail,
label) with ``threshold - below < p <= threshold + above``. They come from the same host copy
of the probabilities as the rows (no second forward pass, no extra device sync); the plain
:meth:`Predictor.predict` / :meth:`Predictor.extract` are unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from glidre_core.documents import Document, Entity, Relation, parse_document
from glidre_core.modeling.entities import ExtractionResult, decode_document_spans, entity_rows, group_mentions
from glidre_core.modeling.label_encoder import LabelEmbeddings
from glidre_core.modeling.label_transfer import LabelTransfer, plan_transfer
from glidre_core.preparation import PreparedDocument
from glidre_core.rows import CandidateRow, EntityRow, TripletRow

if TYPE_CHECKING:
    from glidre_core.modeling.batch import ModelBatch
    from glidre_core.modeling.cache import EncoderCache
    from glidre_core.fewshot.prototype import Prototypes
    from glidre_core.modeling.glidre import GLiDRE

logger = logging.getLogger(__name__)

__all__ = ["BandDecoded", "CandidateRow", "ExtractionResult", "Predictor", "RelationScores", "SpanScores",
           "TripletRow", "EntityRow", "document_from_text", "per_label_thresholds", "select_band",
           "mask_indices", "select_relations", "stored_thresholds"]

Threshold = float | dict[str, float] | None
T = TypeVar("T")


@dataclass
class RelationScores:
    """Probabilities of every ordered entity pair of one document against the label set."""

    prepared: PreparedDocument
    heads: np.ndarray  # [P] entity indices
    tails: np.ndarray  # [P]
    probs: np.ndarray  # [P, R] float32


@dataclass
class PairVectors:
    """The pair vectors ``r`` of every ordered entity pair of one document
    (:meth:`Predictor.pair_representations`); ``vectors @ labels.T`` are the relation logits."""

    prepared: PreparedDocument
    heads: np.ndarray  # [P] entity indices
    tails: np.ndarray  # [P]
    vectors: np.ndarray  # [P, D] float32
    #: [W, D] float32 the document's word vectors (the heads' input), when asked for: the few-shot
    #: context vectors (the words between two mentions, :func:`glidre_core.fewshot.prototype.pair_rules`)
    words: np.ndarray | None = None


@dataclass
class BandDecoded:
    """One document's decoded rows and its band candidates (``*_with_candidates``).

    ``rows`` are exactly what :meth:`Predictor.predict` (or ``extract(...).relations``) returns;
    ``candidates`` the (pair, label) decisions within the band, each with its label's threshold;
    ``result`` the joint path's :class:`ExtractionResult` (``extract_with_candidates`` only).
    ``num_pairs`` / ``num_labels``: the ordered entity pairs and labels that were scored, so
    ``num_pairs * num_labels`` decisions in all.
    """

    rows: list[TripletRow]
    candidates: list[CandidateRow]
    num_pairs: int
    num_labels: int
    result: ExtractionResult | None = None


@dataclass
class SpanScores:
    """Probabilities of every candidate span of one document against the entity-type set."""

    prepared: PreparedDocument
    spans: np.ndarray  # [S, 2] word [start, end)
    probs: np.ndarray  # [S, T] float32


#: Values of ``Predictor(entity_recognizer=...)``.
ENTITY_RECOGNIZERS = ("model", "spacy")


def document_from_text(text: str, entities: Sequence[dict[str, Any] | Entity], doc_id: str = "input") -> Document:
    """A document from a text and entities given as dicts or :class:`Entity` objects."""
    ents = [e.model_dump() if isinstance(e, Entity) else e for e in entities]
    return parse_document({"doc_id": doc_id, "text": text, "entities": ents})


def host_copy(tensor: torch.Tensor) -> Callable[[], np.ndarray]:
    """Start copying ``tensor`` to the host and return a function that waits for the copy and
    returns it as numpy.

    Why: ``tensor.cpu()`` on a GPU synchronises the whole stream, so it would also wait for any
    batch queued after this one. Here the copy goes into pinned memory without blocking, and the
    wait is on an event recorded right after it: the host gets this batch's values while the
    device goes on with the next. On the CPU this is a plain copy.
    """
    if tensor.device.type != "cuda":
        host = tensor.detach().cpu().numpy()
        return lambda: host
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    pinned.copy_(tensor.detach(), non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> np.ndarray:
        done.synchronize()
        return pinned.numpy()

    return wait


def per_label_thresholds(labels: Sequence[str], threshold: Threshold, base: float | Sequence[float]) -> np.ndarray:
    """``[L]`` thresholds from None (``base``), a float, or a per-label dict (missing = base).
    ``base`` is one float or one per label (:func:`stored_thresholds`)."""
    bases = np.broadcast_to(np.asarray(base, dtype=np.float32), (len(labels),))
    if threshold is None:
        return bases.copy()
    if isinstance(threshold, (int, float)):
        return np.full(len(labels), float(threshold), dtype=np.float32)
    return np.asarray([float(threshold.get(lab, b)) for lab, b in zip(labels, bases)], dtype=np.float32)


def stored_thresholds(labels: Sequence[str], config: Any) -> np.ndarray:
    """``[L]`` dev-chosen thresholds stored with a model: ``config.threshold`` for the labels it
    trained on (``config.labels``, compared after :meth:`GLiDREConfig.normalize_label`), and
    ``config.unseen_label_threshold`` (when set) for every other label."""
    out = np.full(len(labels), config.threshold, dtype=np.float32)
    unseen = getattr(config, "unseen_label_threshold", None)
    if unseen is not None:
        seen = {config.normalize_label(lab) for lab in config.labels}
        out[[config.normalize_label(lab) not in seen for lab in labels]] = unseen
    return out


def _top_k(keep: np.ndarray, probs: np.ndarray, top_k: int | None) -> np.ndarray:
    if top_k is not None and probs.shape[1] > top_k:
        kth = np.sort(probs, axis=1)[:, -top_k][:, None]
        keep &= probs >= kth
    return keep


def mask_indices(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D mask (the same arrays, row-major order), via ``flatnonzero``:
    numpy's 2-D ``nonzero`` is several times slower on a pair x label mask (~50 us against ~5 us
    for 210 x 96 on the reference CPU), which was about half of decoding a document."""
    rows, cols = mask.shape
    if cols == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty.copy()
    return np.divmod(np.flatnonzero(mask), cols)


def select_relations(probs: np.ndarray, threshold: np.ndarray, top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pair, label) indices above the per-label threshold, at most ``top_k`` labels per pair."""
    return mask_indices(_top_k(probs > threshold[None, :], probs, top_k))


def select_band(probs: np.ndarray, threshold: np.ndarray, below: float, above: float,
                top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pair, label) indices with ``threshold - below < p <= threshold + above`` (per label).

    ``top_k`` restricts both to the pair's k best labels, as in :func:`select_relations`, so a
    candidate is always a decision :func:`select_relations` could have made: the rows above the
    band are exactly the selected rows that are not candidates.
    """
    thr = threshold[None, :]
    return mask_indices(_top_k((probs > thr - below) & (probs <= thr + above), probs, top_k))


class Predictor:
    """Inference with fixed labels, types, thresholds and options over a :class:`GLiDRE`.

    Arguments:
        relation_labels / entity_labels: strings, precomputed :class:`LabelEmbeddings`, or None
            for the sets the model was trained on (encoded lazily, on first use).
        threshold / entity_threshold: None = the dev-chosen ones stored with the model, a float,
            or a per-label dict (labels missing from it use the stored threshold).
        coreference: "rules" or "none" (None = the model's setting); flat_ner: flat decoding.
        top_k: keep at most k labels per entity pair.
        batch_size: documents per forward pass.
        encoder_cache: cached frozen encoder states (training's dev evaluation).
        need_entity_types: resolve the entity types now, so a model without a span head fails
            here with a clear message instead of at the first document.
        entity_recognizer: who finds entities in raw text for :meth:`extract`: "model" (the span
            head, one encoder pass) or "spacy" (:mod:`glidre_core.spacy_ner`, the optional spaCy
            extra; its mentions are mapped onto the entity types and grouped by the same
            coreference rules, then scored by the relation path like given entities). Measured
            (``benchmarks/spacy_baseline.py``): the default model's span head (with word shapes)
            wins end to end on both CoNLL04 and Re-DocRED; spaCy serves relation-only models.
        candidate_band: ``(below, above)`` margins, in probability, around each label's threshold:
            what :meth:`band_candidates` (and the ``*_with_candidates`` methods) return.
        prototypes: few-shot :class:`glidre_core.fewshot.prototype.Prototypes` (``glidre adapt``;
            by default the ones saved with the model, ``GLiDRE.prototypes``). Requested labels
            they hold (compared after label normalisation) are scored against their support
            examples from the same encoder pass, in place of the label heads' probability, and
            decided at the prototypes' threshold unless ``threshold`` says otherwise; every
            other label is scored as usual.
        label_descriptions: ``{label: one-line description}`` for this predictor's relation
            labels, added to (and overriding) the ones saved with the model: each described
            label is encoded as ``"label: description"`` (:mod:`glidre_core.modeling.label_text`).
            Useful for new types with models trained with descriptions; a model trained on
            names alone has never seen such strings.
    """

    def __init__(
        self,
        model: "GLiDRE",
        *,
        relation_labels: Sequence[str] | LabelEmbeddings | None = None,
        entity_labels: Sequence[str] | LabelEmbeddings | None = None,
        threshold: Threshold = None,
        entity_threshold: Threshold = None,
        coreference: str | None = None,
        flat_ner: bool = True,
        top_k: int | None = None,
        batch_size: int = 8,
        encoder_cache: "EncoderCache | None" = None,
        need_entity_types: bool = False,
        entity_recognizer: Any = "model",
        candidate_band: tuple[float, float] | None = None,
        prototypes: "Prototypes | None" = None,
        label_descriptions: Mapping[str, str] | None = None,
    ):
        if isinstance(entity_recognizer, str) and entity_recognizer not in ENTITY_RECOGNIZERS:
            raise ValueError(f"unknown entity_recognizer {entity_recognizer!r}; expected one of {ENTITY_RECOGNIZERS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if coreference not in (None, "rules", "none"):
            raise ValueError(f"unknown coreference mode {coreference!r}; expected 'rules' or 'none'")
        if candidate_band is not None:
            candidate_band = (float(candidate_band[0]), float(candidate_band[1]))
            if not all(0 <= m < 1 for m in candidate_band):
                raise ValueError(f"candidate_band margins must be in [0, 1), got {candidate_band}")
        self.candidate_band = candidate_band
        self.prototypes = prototypes
        self.label_descriptions = dict(label_descriptions or {})
        self._prototype_columns: tuple[np.ndarray, np.ndarray] | None = None  # (label columns, prototype rows)
        self.model = model
        self._relation_spec, self._entity_spec = relation_labels, entity_labels
        self._threshold_spec, self._entity_threshold_spec = threshold, entity_threshold
        self.coreference = coreference or model.config.coreference
        self.flat_ner = flat_ner
        self.top_k = top_k
        self.batch_size = batch_size
        self.encoder_cache = encoder_cache
        self._relations: LabelEmbeddings | None = None
        self._scored: LabelEmbeddings | None = None  # the relations, plus trained labels unseen ones borrow from
        self._transfer: LabelTransfer | None = None
        self._types: LabelEmbeddings | None = None
        self._thresholds = self._entity_thresholds = np.zeros(0, dtype=np.float32)
        # a recognizer object (a configured SpacyRecognizer, e.g. one mapping variant in a
        # benchmark) stands for "spacy" with that object
        self._recognizer: Any = None if isinstance(entity_recognizer, str) else entity_recognizer
        self.entity_recognizer = entity_recognizer if isinstance(entity_recognizer, str) else "spacy"
        if need_entity_types:
            _ = self.recognizer if self.entity_recognizer == "spacy" else self.entity_types

    # -- mode and embeddings --------------------------------------------------------------------
    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode and no gradients for the duration; the model's mode is restored after."""
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was)

    def _resolve(self, given: Any, stored: list[str], what: str, encode: Any) -> LabelEmbeddings:
        if isinstance(given, LabelEmbeddings):
            return given
        if given is None:
            if not stored:
                raise ValueError(f"no {what} given and the model stores none")
            given = stored
        with self.inference():
            return encode(list(given))

    @property
    def relations(self) -> LabelEmbeddings:
        """The relation labels and their embeddings (encoded once, in eval mode)."""
        if self._relations is None:
            relations = self._resolve(
                self._relation_spec, self.model.config.labels, "relation labels",
                lambda labels: self.model.encode_labels(labels, self.label_descriptions))
            with self.inference():
                self._transfer = plan_transfer(self.model, relations)
            self._scored = relations if self._transfer is None else LabelEmbeddings(
                list(relations.labels) + list(self._transfer.extra.labels if self._transfer.extra else []),
                self._transfer.vectors(relations))
            self._relations = relations
            base = stored_thresholds(self._relations.labels, self.model.config)
            if self.prototypes is not None:
                norm = self.model.config.normalize_label
                row = {norm(lab): i for i, lab in enumerate(self.prototypes.labels)}
                pairs = [(c, row[norm(lab)]) for c, lab in enumerate(relations.labels) if norm(lab) in row]
                if pairs:
                    cols, rows = (np.array(x, dtype=np.int64) for x in zip(*pairs))
                    self._prototype_columns = (cols, rows)
                    base[cols] = self.prototypes.threshold
            self._thresholds = per_label_thresholds(self._relations.labels, self._threshold_spec, base)
        return self._relations

    @property
    def prototype_labels(self) -> list[str]:
        """The requested labels scored against few-shot prototypes (empty without prototypes)."""
        _ = self.relations
        if self._prototype_columns is None:
            return []
        return [self.relations.labels[int(c)] for c in self._prototype_columns[0]]

    @property
    def thresholds(self) -> np.ndarray:
        """``[R]`` decision thresholds of the relation labels."""
        _ = self.relations
        return self._thresholds

    @property
    def entity_types(self) -> LabelEmbeddings:
        """The entity types and their embeddings (span head models; encoded once, in eval mode)."""
        if self._types is None:
            if self.model.span_head is None:
                raise ValueError(
                    "this model has no entity (span) head: give entities with each document "
                    "(predict_documents), or use a model trained with span_head: true"
                )
            self._types = self._resolve(self._entity_spec, self.model.config.entity_labels, "entity types",
                                        self.model.encode_entity_types)
            self._entity_thresholds = per_label_thresholds(self._types.labels, self._entity_threshold_spec,
                                                           self.model.config.entity_threshold)
        return self._types

    @property
    def recognizer(self) -> Any:
        """The spaCy recognizer (``entity_recognizer="spacy"``), loaded once on first use."""
        if self._recognizer is None:
            from glidre_core.spacy_ner import SpacyRecognizer

            spec = self._entity_spec
            types = list(spec.labels if isinstance(spec, LabelEmbeddings) else (spec or self.model.config.entity_labels))
            if not types:
                raise ValueError("entity_recognizer='spacy' needs entity types: give entity_labels (the model stores none)")
            self._recognizer = SpacyRecognizer(types)
        return self._recognizer

    @property
    def entity_thresholds(self) -> np.ndarray:
        """``[T]`` decision thresholds of the entity types."""
        _ = self.entity_types
        return self._entity_thresholds

    # -- batching -------------------------------------------------------------------------------
    def prepare(self, items: Iterable[Document | PreparedDocument | str], bare: bool = False) -> list[PreparedDocument]:
        """Prepared documents; raw strings become documents ``doc-<i>``; ``bare`` drops given
        entities and relations (the joint path predicts its own)."""
        out = []
        for i, item in enumerate(items):
            if isinstance(item, PreparedDocument):
                if bare and (item.doc.entities or item.mention_spans):
                    item = PreparedDocument(item.doc.model_copy(update={"entities": [], "relations": []}),
                                            item.tokens, [], [], [], item.words, item.entity_type_scope,
                                            word_shapes=item.word_shapes)
                out.append(item)
                continue
            doc = item if isinstance(item, Document) else parse_document({"doc_id": f"doc-{i}", "text": item})
            if bare:
                doc = doc.model_copy(update={"entities": [], "relations": []})
            out.append(self.model.prepare(doc))
        return out

    def batches(self, prepared: Sequence[PreparedDocument]) -> Iterator[list[int]]:
        """Index lists of similar-size documents, ``batch_size`` each: sorted by longest encoder
        window, then number of windows, then entities. The encoder is most of the cost, so its
        padding matters most (measured on 64 Re-DocRED test documents: sorting by entity count
        first gave 33-39% fewer docs/s, with about 30% more padded sub-words)."""
        def key(i: int) -> tuple[int, int, int]:
            windows = prepared[i].tokens.windows
            return (max((w.tok_end - w.tok_start for w in windows), default=0), len(windows),
                    len(prepared[i].mention_spans))

        order = sorted(range(len(prepared)), key=key)
        for s in range(0, len(order), self.batch_size):
            yield order[s : s + self.batch_size]

    def _batch(self, prepared: Sequence[PreparedDocument]) -> "ModelBatch":
        batch, _ = self.model.collate(prepared)
        return self.encoder_cache.attach(batch) if self.encoder_cache is not None else batch

    # -- scores ---------------------------------------------------------------------------------
    @property
    def scored_labels(self) -> LabelEmbeddings:
        """What pairs are scored against: :attr:`relations`, followed by the trained labels that
        unseen ones borrow from when the model transfers scores (``unseen_label_transfer``,
        :mod:`glidre_core.modeling.label_transfer`); :meth:`_relation_probs` maps back to
        :attr:`relations`."""
        _ = self.relations
        assert self._scored is not None
        return self._scored

    def _relation_probs(self, logits: torch.Tensor, th: torch.Tensor | None) -> torch.Tensor:
        if th is not None:
            logits = logits - th.unsqueeze(-1)
        probs = torch.sigmoid(logits)
        return probs if self._transfer is None else self._transfer.apply(probs)

    def _split_relations(self, prepared: Sequence[PreparedDocument], batch: "ModelBatch", probs: np.ndarray) -> list[RelationScores]:
        out, start = [], 0
        for p, h, t in zip(prepared, batch.entities.heads, batch.entities.tails):
            out.append(RelationScores(p, h, t, probs[start : start + len(h)]))
            start += len(h)
        return out

    def _score_prototypes(self, scores: list[RelationScores], reps: torch.Tensor,
                          words: torch.Tensor) -> list[RelationScores]:
        """Overwrite the prototype labels' columns of ``scores`` (one batch, in order) with the
        prototype probabilities of the batch's pair vectors ``reps`` ``[sum P, D]`` (and word
        vectors ``words`` ``[B, W, D]`` when the prototypes use contexts): one copy to the host,
        after scoring; the pair rules read each document on the host."""
        assert self._prototype_columns is not None and self.prototypes is not None
        cols, rows = self._prototype_columns
        vectors, start = reps.cpu().numpy(), 0
        host_words = words.float().cpu().numpy() if self.prototypes.context_weight > 0 else None
        for b, sc in enumerate(scores):
            n = len(sc.heads)
            w = None if host_words is None else host_words[b, : len(sc.prepared.words or ())]
            pv = PairVectors(sc.prepared, sc.heads, sc.tails, vectors[start : start + n], w)
            sc.probs[:, cols] = self.prototypes.pair_probabilities(pv)[:, rows]
            start += n
        return scores

    def _map(self, prepared: Sequence[PreparedDocument],
             step: Callable[[list[PreparedDocument], "ModelBatch"], Callable[[], list[T]]]) -> list[T]:
        """The one batch loop: ``step`` on each batch of similar documents (in eval mode, without
        gradients); its per-document results come back in input order.

        ``step`` queues a batch's device work and returns a *finisher* that waits for that batch's
        results (:func:`host_copy`) and does the host work (splitting, decoding). The loop calls a
        batch's finisher only after the next batch has been built and queued, so on a GPU the host
        work of one batch overlaps the device work of the next instead of leaving the device idle
        (on a CPU the order changes nothing). One batch of results waits at a time.
        """
        out: list[T | None] = [None] * len(prepared)

        def finish(idx: list[int], finisher: Callable[[], list[T]]) -> None:
            for i, result in zip(idx, finisher()):
                out[i] = result

        pending: tuple[list[int], Callable[[], list[T]]] | None = None
        with self.inference():
            for idx in self.batches(prepared):
                docs = [prepared[i] for i in idx]
                queued = (idx, step(docs, self._batch(docs)))
                if pending is not None:
                    finish(*pending)
                pending = queued
            if pending is not None:
                finish(*pending)
        return out  # type: ignore[return-value]

    def score_relations(self, items: Iterable[Document | PreparedDocument]) -> list[RelationScores]:
        """Relation probabilities of every ordered entity pair of each document (given
        entities), in input order."""
        return self._decoded_scores(items, lambda scores: scores)

    def _decoded_scores(self, items: Iterable[Document | PreparedDocument], then: Callable[[RelationScores], T]) -> list[T]:
        """``then`` of each document's :class:`RelationScores`, in input order. ``then`` runs in
        the batch's finisher, so decoding one batch overlaps the next batch's device work (with a
        trained model decoding costs about as much host time per document as building the
        batch; run after the loop, as before, the device sat idle meanwhile)."""
        labels = self.scored_labels

        def step(docs: list[PreparedDocument], batch: "ModelBatch") -> Callable[[], list[T]]:
            res = self.model(batch, labels)
            probs = host_copy(self._relation_probs(res.relation_logits, res.threshold_logits))

            def finish() -> list[T]:
                scores = self._split_relations(docs, batch, probs())
                if self._prototype_columns is not None:
                    scores = self._score_prototypes(scores, self.model.pair_representations(
                        batch, exact=True, encoded=res.encoded), res.encoded.words)
                return [then(sc) for sc in scores]

            return finish

        return self._map(self.prepare(items), step)

    def pair_representations(self, items: Iterable[Document | PreparedDocument], exact: bool = False,
                             words: bool = False) -> list[PairVectors]:
        """The pair vectors ``r`` (:meth:`GLiDRE.pair_representations`; ``exact``: fp32 heads) of
        every ordered entity pair of each document (given entities), in input order and in the
        pair order of :meth:`score_relations`. No labels are involved (few-shot prototypes
        compare pairs). ``words``: also each document's word vectors (``PairVectors.words``)."""

        def step(docs: list[PreparedDocument], batch: "ModelBatch") -> Callable[[], list[PairVectors]]:
            encoded = self.model.encode(batch)
            reps_copy = host_copy(self.model.pair_representations(batch, exact=exact, encoded=encoded))
            words_copy = host_copy(encoded.words.float()) if words else None

            def finish() -> list[PairVectors]:
                reps, host_words = reps_copy(), None if words_copy is None else words_copy()
                out, start = [], 0
                for b, (p, h, t) in enumerate(zip(docs, batch.entities.heads, batch.entities.tails)):
                    w = None if host_words is None else host_words[b, : len(p.words or ())]
                    out.append(PairVectors(p, h, t, reps[start : start + len(h)], w))
                    start += len(h)
                return out

            return finish

        return self._map(self.prepare(items), step)

    def score_spans(self, items: Iterable[Document | PreparedDocument]) -> list[SpanScores]:
        """Entity probabilities of every candidate span of each document, in input order."""
        types = self.entity_types

        def step(docs: list[PreparedDocument], batch: "ModelBatch") -> Callable[[], list[SpanScores]]:
            res = self.model(batch, None, types)
            probs = host_copy(torch.sigmoid(res.span_logits))
            return lambda: self._split_spans(docs, batch, probs())

        return self._map(self.prepare(items), step)

    @staticmethod
    def _split_spans(prepared: Sequence[PreparedDocument], batch: "ModelBatch", probs: np.ndarray) -> list[SpanScores]:
        grid = batch.span_grid
        return [SpanScores(p, grid[batch.span_valid[b]], probs[b][batch.span_valid[b]]) for b, p in enumerate(prepared)]

    # -- rows -----------------------------------------------------------------------------------
    def _rows(self, scores: RelationScores, pairs: np.ndarray, labels: np.ndarray,
              thresholds: np.ndarray | None = None) -> list[Any]:
        """Rows for the selected ``(pair, label)`` indices, best first (ties keep selection
        order); with ``thresholds``, candidate rows that carry their label's threshold. Each
        entity's fields are looked up once per document, not once per row, and rows are dict
        literals: with ~30 rows per Re-DocRED document, per-row lookups and calls were most of
        decoding (``benchmarks/collate_benchmark.py``, ``decode``)."""
        if len(pairs) == 0:
            return []
        doc, names = scores.prepared.doc, self.relations.labels
        values = scores.probs[pairs, labels]
        order = np.argsort(-values, kind="stable")
        heads, tails = scores.heads[pairs[order]].tolist(), scores.tails[pairs[order]].tolist()
        fields: dict[int, tuple[str, str, str | None]] = {}
        for i in set(heads).union(tails):
            e: Entity = doc.entities[i]
            fields[i] = (e.id, doc.entity_text(e), e.type)
        rows: list[Any] = []
        for h, t, r, v in zip(heads, tails, labels[order].tolist(), values[order].tolist()):
            hid, htext, htype = fields[h]
            tid, ttext, ttype = fields[t]
            row: TripletRow = {"head_id": hid, "head_text": htext, "head_type": htype, "relation": names[r],
                               "tail_id": tid, "tail_text": ttext, "tail_type": ttype, "score": v}
            rows.append(row)
        if thresholds is not None:
            rows = [CandidateRow(**row, threshold=float(thresholds[r])) for row, r in zip(rows, labels[order].tolist())]
        return rows

    def decode_relations(self, scores: RelationScores, threshold: np.ndarray | None = None) -> list[TripletRow]:
        """Rows for the pairs and labels above the thresholds, best first."""
        thr = self.thresholds if threshold is None else threshold
        return self._rows(scores, *select_relations(scores.probs, thr, self.top_k))

    def band_candidates(self, scores: RelationScores, band: tuple[float, float] | None = None,
                        threshold: np.ndarray | None = None) -> list[CandidateRow]:
        """Rows for the (pair, label) decisions within ``band`` (``(below, above)`` margins
        around each label's threshold; default: ``candidate_band``), best first, each with its
        threshold. Decoded on the host from the same probabilities as :meth:`decode_relations`."""
        band = band if band is not None else self.candidate_band
        if band is None:
            raise ValueError("no candidate band: give band=(below, above) or Predictor(candidate_band=...)")
        thr = self.thresholds if threshold is None else threshold
        return self._rows(scores, *select_band(scores.probs, thr, band[0], band[1], self.top_k), thresholds=thr)

    def _band_decoded(self, scores: RelationScores, result: ExtractionResult | None = None,
                      rows: list[TripletRow] | None = None) -> BandDecoded:
        return BandDecoded(rows if rows is not None else self.decode_relations(scores), self.band_candidates(scores),
                           len(scores.heads), scores.probs.shape[1], result)

    def predict(self, items: Iterable[Document | PreparedDocument]) -> list[list[TripletRow]]:
        """Relations between each document's given entities: rows per document, input order."""
        return self._decoded_scores(items, self.decode_relations)

    def predict_with_candidates(self, items: Iterable[Document | PreparedDocument]) -> list[BandDecoded]:
        """:meth:`predict`'s rows and the band candidates of each document (one forward pass)."""
        return self._decoded_scores(items, self._band_decoded)

    def extract(self, items: Iterable[Document | PreparedDocument | str]) -> list[ExtractionResult]:
        """Entities and relations from raw text (given entities are ignored), input order.

        Per batch: one forward pass for the encoder and the span head, one copy of the span
        probabilities to the host, span decoding and mention clustering there, then the relation
        scorer on the predicted entities from the *same* encoder output, and one more copy.
        """
        return [d.result for d in self._extract(items, candidates=False)]  # type: ignore[misc]

    def extract_with_candidates(self, items: Iterable[Document | PreparedDocument | str]) -> list[BandDecoded]:
        """:meth:`extract`'s results (``.result``; ``.rows`` are its relations) and the band
        candidates between the predicted entities, from the same relation probabilities."""
        return self._extract(items, candidates=True)

    def _extract(self, items: Iterable[Document | PreparedDocument | str], candidates: bool) -> list[BandDecoded]:
        if self.entity_recognizer == "spacy":
            return self._extract_with_spacy(items, candidates)
        types, labels = self.entity_types, self.scored_labels
        ent_thr, type_names = self.entity_thresholds, list(types.labels)

        def step(docs: list[PreparedDocument], batch: "ModelBatch") -> Callable[[], list[BandDecoded]]:
            # entities first (one host round trip: pairs depend on the decoded spans), then the
            # relation scores are queued and their decoding waits for the finisher
            res = self.model(batch, None, types)
            spans = self._split_spans(docs, batch, torch.sigmoid(res.span_logits).cpu().numpy())
            predicted, with_entities = [], []
            for p, sc in zip(docs, spans):
                found = decode_document_spans(p.doc, p.words, sc.spans, sc.probs, ent_thr, self.flat_ner)
                grouped = group_mentions(found, p.words, type_names, self.coreference)
                predicted.append(grouped)
                doc = p.doc.model_copy(update={"entities": grouped.entities})
                with_entities.append(PreparedDocument(doc, p.tokens, grouped.mention_spans,
                                                      [e.id for e in grouped.entities], [], p.words,
                                                      word_shapes=p.word_shapes))
            index = self.model.entity_index([p.mention_spans for p in with_entities], batch.max_words)
            logits, th = self.model.score_pairs(res.encoded, index, labels.vectors)
            probs = host_copy(self._relation_probs(logits, th))

            def finish() -> list[BandDecoded]:
                scores = self._split_relations(with_entities, batch.with_entities(index), probs())
                if self._prototype_columns is not None:
                    scores = self._score_prototypes(scores, self.model.pair_representations(
                        batch, exact=True, encoded=res.encoded, index=index), res.encoded.words)
                out = []
                for p, grouped, sc in zip(with_entities, predicted, scores):
                    rows = self.decode_relations(sc)
                    doc = p.doc.model_copy(update={
                        "relations": [Relation(head=r["head_id"], label=r["relation"], tail=r["tail_id"]) for r in rows]
                    })
                    result = ExtractionResult(doc, entity_rows(doc, grouped), rows)
                    out.append(self._band_decoded(sc, result, rows) if candidates
                               else BandDecoded(rows, [], len(sc.heads), sc.probs.shape[1], result))
                return out

            return finish

        return self._map(self.prepare(items, bare=True), step)

    def _extract_with_spacy(self, items: Iterable[Document | PreparedDocument | str],
                            candidates: bool = False) -> list[BandDecoded]:
        """spaCy's entities, then the relation path on them (as if they had been given)."""
        prepared = self.prepare(items, bare=True)
        found = self.recognizer.entities([p.doc for p in prepared], self.coreference)
        docs = [p.doc.model_copy(update={"entities": pe.entities}) for p, pe in zip(prepared, found)]
        out = []
        for doc, pe, sc in zip(docs, found, self.score_relations(docs)):
            rows = self.decode_relations(sc)
            doc = doc.model_copy(update={
                "relations": [Relation(head=r["head_id"], label=r["relation"], tail=r["tail_id"]) for r in rows]
            })
            result = ExtractionResult(doc, entity_rows(doc, pe), rows)
            out.append(self._band_decoded(sc, result, rows) if candidates
                       else BandDecoded(rows, [], len(sc.heads), sc.probs.shape[1], result))
        return out
