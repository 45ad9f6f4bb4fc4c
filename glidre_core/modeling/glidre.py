"""GLiDRE: document-level relation extraction against relation labels given as strings.

Forward pass (``../shared/MODEL.md``): document encoder -> first-sub-word word vectors (projected
to D) -> mean mention / entity pooling -> entity attention from the last layer -> localized
context per pair -> FFN heads -> ``sigmoid(pair . label)``; with a span head, also
``sigmoid(span . entity type)`` for every candidate span.

This module is the network alone: :class:`GLiDRE` builds the modules and runs
:meth:`GLiDRE.forward` on a padded :class:`~glidre_core.modeling.batch.ModelBatch` as one
batched tensor program, with no host synchronisation between the encoder and the last logit.
The pieces beside it:

* :mod:`.batch` builds a batch's index tensors on the CPU (one copy to the device);
* :mod:`.targets` builds training targets and the joint loss;
* :mod:`.persistence` saves and loads (``save_pretrained`` / ``from_pretrained``);
* :mod:`glidre_core.inference` is the inference layer (:class:`~glidre_core.inference.Predictor`):
  label embeddings, thresholds, eval mode, decoding into rows. The convenience methods on
  :class:`GLiDRE` (``predict_documents``, ``extract``, ...) are thin calls into it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from glidre_core.config import GLiDREConfig
from glidre_core.documents import Document
from glidre_core.modeling.batch import EntityIndex, ModelBatch, build_entity_index, collate
from glidre_core.modeling.encoder import DocumentEncoder, sdpa_context
from glidre_core.modeling.label_encoder import LabelEmbeddings, LabelEncoder
from glidre_core.modeling.label_text import describe_labels
from glidre_core.modeling.pooling import pool_entities
from glidre_core.modeling.precision import encoder_dtype, head_dtype
from glidre_core.modeling.scorer import PairScorer
from glidre_core.modeling.spans import SpanHead
from glidre_core.preparation import PreparedDocument, prepare_document
from glidre_core.pretrained import load_encoder, load_tokenizer

if TYPE_CHECKING:
    from glidre_core.inference import ExtractionResult, TripletRow

logger = logging.getLogger(__name__)



@dataclass
class EncodedBatch:
    """The encoder stage's output for a batch: projected word vectors and word attention."""

    words: torch.Tensor  # [B, W, D]
    attention: torch.Tensor  # [B, W, W]


@dataclass
class GLiDREOutput:
    """Logits of a batch. ``relation_logits`` rows: per document, its ordered pairs in the order of
    ``batch.entities.heads[b]`` / ``tails[b]``."""

    encoded: EncodedBatch
    relation_logits: torch.Tensor | None = None  # [P, R]
    threshold_logits: torch.Tensor | None = None  # [P] (adaptive threshold only)
    span_logits: torch.Tensor | None = None  # [B, S, T]


class GLiDRE(nn.Module):
    def __init__(self, config: GLiDREConfig):
        super().__init__()
        self.config = config
        enc_model = load_encoder(config.encoder, config.encoder_config)
        self.encoder = DocumentEncoder(
            enc_model, load_tokenizer(config.encoder), config.max_length, config.window_overlap
        )
        dim = config.hidden_size or self.encoder.hidden_size
        self.dim = dim
        self.word_projection = (
            nn.Linear(self.encoder.hidden_size, dim) if dim != self.encoder.hidden_size else nn.Identity()
        )
        self.label_encoder = LabelEncoder(
            load_encoder(config.label_encoder, config.label_encoder_config),
            load_tokenizer(config.label_encoder),
            dim,
            config.ffn_expansion,
            config.dropout,
            trainable=config.train_label_encoder,
            residual=config.label_head == "residual",
            noise=config.label_noise,
        )
        self.scorer = PairScorer(dim, config.ffn_expansion, config.dropout, config.pair_chunk_size)
        self.span_head = (
            SpanHead(dim, config.ffn_expansion, config.dropout, config.max_span_width,
                     representation=config.span_representation, word_shape=config.span_word_shape)
            if config.span_head else None
        )
        self.dropout = nn.Dropout(config.dropout)
        #: few-shot prototypes saved with the model (``glidre adapt``; :mod:`glidre_core.fewshot.prototype`):
        #: labels scored against support examples instead of the label heads; not a parameter
        self.prototypes: Any = None
        if config.loss == "adaptive_threshold":
            self.threshold_embedding = nn.Parameter(torch.randn(dim) * 0.02)
        else:
            self.threshold_embedding = None
        self._freeze_lower_layers()

    # -- parameters ----------------------------------------------------------------------------
    @property
    def frozen_split(self) -> int:
        """Number of lower encoder layers that are frozen (0 = all trainable)."""
        k = self.config.trainable_encoder_layers
        n = self.encoder.num_layers
        return 0 if k is None else max(0, n - k)

    def _freeze_lower_layers(self) -> None:
        split = self.frozen_split
        if split == 0:
            if self.config.freeze_embeddings:
                if not self.encoder.layered:
                    raise ValueError("freeze_embeddings needs an encoder with `embeddings` and `encoder.layer`")
                self.encoder.model.embeddings.requires_grad_(False)
            return
        if not self.encoder.layered:
            raise ValueError("trainable_encoder_layers needs an encoder with `embeddings` and `encoder.layer`")
        m = self.encoder.model
        m.embeddings.requires_grad_(False)
        for layer in m.encoder.layer[:split]:
            layer.requires_grad_(False)
        if getattr(m, "pooler", None) is not None:
            m.pooler.requires_grad_(False)

    def _encoder_ids(self) -> set[int]:
        return {id(p) for p in self.encoder.parameters()} | {id(p) for p in self.label_encoder.model.parameters()}

    def encoder_parameters(self) -> list[nn.Parameter]:
        ids = self._encoder_ids()
        return [p for p in self.parameters() if id(p) in ids and p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        ids = self._encoder_ids()
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- inputs --------------------------------------------------------------------------------
    def prepare(self, doc: Document) -> PreparedDocument:
        """Words, sub-word windows and mention word spans of ``doc``; errors name the field."""
        return prepare_document(
            doc, self.encoder.tokenizer, self.encoder.max_length, self.encoder.overlap,
            self.config.normalize_label,
        )

    def length_multiple(self, device: torch.device | None = None) -> int:
        """Window length bucket: ``config.length_multiple``, or 64 on CUDA and 1 elsewhere."""
        if self.config.length_multiple is not None:
            return self.config.length_multiple
        return 64 if (device or self.device).type == "cuda" else 1

    def pair_chunk_size(self, device: torch.device | None = None) -> int:
        """Ordered pairs per scorer chunk: ``config.pair_chunk_size`` (``scorer.chunk_size``), or
        4096 on CPU and 32768 on CUDA. Why two: every chunk is a fixed run of about 60 small ops,
        which on a GPU are kernel launches paid on the host (measured on an H200: 7 chunks per
        Re-DocRED batch of 32 at 4096), while the memory a chunk holds is small either way
        (:func:`~glidre_core.modeling.batch.pair_chunk` also caps it by elements, so a
        1,000-entity document stays bounded)."""
        if self.scorer.chunk_size is not None:
            return self.scorer.chunk_size
        return 32768 if (device or self.device).type == "cuda" else 4096

    def collate(
        self, prepared: Sequence[PreparedDocument], extra: dict[str, np.ndarray] | None = None
    ) -> tuple[ModelBatch, dict[str, torch.Tensor]]:
        """A :class:`ModelBatch` of ``prepared`` on the model's device (one host-to-device copy);
        ``extra`` arrays (training targets) travel in the same copy."""
        cls_id, sep_id, pad_id = self.encoder.special_ids
        device = self.device
        return collate(
            prepared, device=device, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id,
            max_span_width=self.config.max_span_width, length_multiple=self.length_multiple(device),
            logsumexp=self.config.pooling == "logsumexp", pair_chunk_size=self.pair_chunk_size(device), extra=extra,
            word_shapes=self.span_head is not None and self.span_head.word_shape,
        )

    def entity_index(self, mention_spans: Sequence[Sequence[Sequence[tuple[int, int]]]], max_words: int) -> EntityIndex:
        """The entity part of a batch for new entities (the joint path's predicted ones)."""
        return build_entity_index(mention_spans, max_words, self.device, self.config.pooling == "logsumexp",
                                  self.pair_chunk_size())

    # -- label and type embeddings -------------------------------------------------------------
    def label_texts(self, labels: Sequence[str],
                    descriptions: Mapping[str, str] | None = None) -> list[str | tuple[str, str]]:
        """What the label encoder reads for ``labels``: the normalised name, or, where the model's
        ``config.label_descriptions`` or ``descriptions`` (which wins) has a description,
        ``"name: description"`` or ``(name, description)`` by ``config.label_description_mode``
        (:mod:`.label_text`)."""
        norm = [self.config.normalize_label(lab) for lab in labels]
        table = {**self.config.label_descriptions, **(descriptions or {})}
        return describe_labels(norm, table, self.config.normalize_label, self.config.label_description_mode)

    def encode_labels(self, labels: Sequence[str], descriptions: Mapping[str, str] | None = None) -> LabelEmbeddings:
        """Embed a label set once; pass the result to ``predict_*`` to skip re-encoding.
        ``descriptions`` adds or overrides label descriptions for this call (new types)."""
        if not labels:
            raise ValueError("at least one relation label is needed")
        norm = [self.config.normalize_label(lab) for lab in labels]
        if len(set(norm)) != len(norm):
            raise ValueError("relation labels must be distinct (after casing normalisation)")
        return LabelEmbeddings(list(labels), self.label_encoder(self.label_texts(labels, descriptions)))

    def label_sentence_vectors(self, labels: Sequence[str]) -> torch.Tensor:
        """``[R, H]`` unit-length sentence embeddings of the label strings (the label encoder's
        pooled output, before the model's label map): the space in which labels are compared with
        each other (:mod:`.label_transfer`), which the label map learns nothing about."""
        pooled = self.label_encoder.pooled(self.label_texts(labels))
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def label_anchor_penalty(self, labels: Sequence[str]) -> torch.Tensor:
        """The label map's distance from the sentence-embedding space (training regulariser,
        ``config.label_anchor_weight``; :meth:`LabelEncoder.anchor_penalty`)."""
        return self.label_encoder.anchor_penalty(self.label_texts(labels))

    def encode_entity_types(self, types: Sequence[str]) -> LabelEmbeddings:
        """Embed an entity-type set once (span head models); reuse it for every document."""
        if self.span_head is None:
            raise ValueError(
                "this model has no entity (span) head: give entities with each document, or use a "
                "model trained with span_head: true"
            )
        if not types:
            raise ValueError("at least one entity type is needed")
        norm = [self.config.normalize_label(t) for t in types]
        if len(set(norm)) != len(norm):
            raise ValueError("entity types must be distinct (after casing normalisation)")
        pooled = self.label_encoder.projection(self.label_encoder.pooled(norm))
        return LabelEmbeddings(list(types), self.span_head.type_vectors(pooled))

    # -- forward -------------------------------------------------------------------------------
    def inference_encoder(self, device: torch.device) -> DocumentEncoder:
        """The document encoder this pass runs: the module itself (training, or fp32 inference),
        or, for inference in bf16 (``config.encoder_precision``, :mod:`.precision`), a copy of it
        cast to bf16 once and cached (:meth:`_cast_copies`).

        Why a cast copy and not autocast: autocast re-casts every weight of the encoder on every
        batch and casts activations around each normalisation. On an H200, bf16 inference cost
        about 460 more aten ops per batch of 32 MiniLM documents than fp32 and ran slower than
        fp32 over a whole pass (``benchmarks/results/gpu/h200_run3``); that those ops are mostly
        autocast's casts is an inference, not an op-by-op profile, and the gain of the copy is
        not yet measured on a GPU. The copy keeps the residual
        stream in bf16, as a model loaded with ``torch_dtype=bfloat16`` does, while the attention
        rows GLiDRE pools with are computed in fp32 (:meth:`DocumentEncoder._attention_rows`).
        It costs a second copy of the encoder weights in bf16 (half the fp32 size).
        """
        if self.training:
            return self.encoder
        dtype = encoder_dtype(self.config.encoder_precision, device)
        if dtype is torch.float32:
            return self.encoder
        return self._cast_copies("encoder", (self.encoder,), dtype)[0]

    def train(self, mode: bool = True) -> "GLiDRE":
        """Also drops the cached low-precision copies of the heads and the encoder
        (:meth:`_cast_copies`): weights change only in training mode, and a fused optimizer step
        changes them without bumping the version counters the cache is keyed on. Before this,
        every dev evaluation of a training run after the first scored with the bf16 head copies
        made at the first one, wherever the heads run in bf16 (a CPU with AVX512-BF16/AMX, a
        GPU): a zero-shot run with label descriptions recorded seen-type dev F1 28.55 for a
        checkpoint that scores 34.71 reloaded, and chose its checkpoint and threshold by it."""
        if mode:
            for slot in [k for k in self.__dict__ if k.startswith("_cast_")]:
                del self.__dict__[slot]
        return super().train(mode)

    def _cast_copies(self, slot: str, modules: tuple[nn.Module | None, ...], dtype: torch.dtype) -> tuple[Any, ...]:
        """Copies of ``modules`` cast to ``dtype`` once, frozen, in eval mode, and cached under
        ``slot`` as a plain attribute (not a registered submodule: never saved, never trained).

        The cache is keyed on the identity, version counter and device of every parameter, so
        ``load_weights``, in-place edits and ``.to(device)`` invalidate it; and it is dropped
        whenever the model enters training mode (:meth:`train`), because an optimizer step does
        not always bump the version counter: torch 2.13's fused AdamW (the trainer's and
        ``glidre adapt``'s) leaves it unchanged. A module's tokenizer (the encoder's) is shared
        with the copy, not copied.
        """
        key = (dtype, tuple((id(p), p._version, p.device) for m in modules if m is not None for p in m.parameters()))
        cached = self.__dict__.get(f"_cast_{slot}")
        if cached is None or cached[0] != key:
            copies = []
            for m in modules:
                if m is None:
                    copies.append(None)
                    continue
                tokenizer = getattr(m, "tokenizer", None)
                memo = {} if tokenizer is None else {id(tokenizer): tokenizer}
                copies.append(copy.deepcopy(m, memo).to(dtype).requires_grad_(False).eval())
            self.__dict__[f"_cast_{slot}"] = cached = (key, tuple(copies))
        return cached[1]

    def encode(self, batch: ModelBatch) -> EncodedBatch:
        """The encoder stage: word vectors (projected to D, with dropout) and word attention,
        from the windows, from cached lower-layer states, or from cached encoder outputs."""
        if batch.encoded is not None:
            words, attention = batch.encoded
        else:
            split = self.frozen_split if batch.lower_states is not None else 0
            device = batch.key_mask.device
            with sdpa_context(self.config.sdpa_backend, device):
                words, attention = self.inference_encoder(device)(batch, split)
        # back to fp32 after a bf16 encoder: the heads pick their own precision
        words = self.dropout(self.word_projection(words.float()))
        return EncodedBatch(words, attention)

    def score_pairs(
        self, encoded: EncodedBatch, index: EntityIndex, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Relation logits ``[P, R]`` (and adaptive-threshold logits ``[P]``) of the batch's
        real ordered pairs, from an encoded batch and an entity index."""
        scorer, _, precision = self._inference_heads(encoded.words.device)
        if self.threshold_embedding is not None:
            labels = torch.cat([labels, self.threshold_embedding.unsqueeze(0).to(labels.dtype)])
        with precision:
            ents = pool_entities(encoded.words, encoded.attention, index, self.config.pooling)
            logits = scorer(ents, index, labels).float()
        if self.threshold_embedding is not None:
            return logits[:, :-1], logits[:, -1]
        return logits, None

    def pair_representations(self, batch: ModelBatch, exact: bool = False,
                             encoded: EncodedBatch | None = None, index: EntityIndex | None = None) -> torch.Tensor:
        """The pair vectors ``r`` ``[P, D]`` (fp32) of the batch's real ordered pairs, in the rows
        of ``forward(batch, labels).relation_logits``, which equal ``r @ labels.T`` (same heads and
        precision as :meth:`score_pairs`). For comparing pairs with each other (few-shot
        prototypes, :mod:`glidre_core.fewshot.prototype`); :meth:`forward` does not use it.

        ``exact``: run the heads in fp32 even where inference uses bf16 heads
        (``config.head_precision``). bf16 results depend on the batch a document is in (kernel
        blocking changes the rounding, ~1e-2 relative), which moves cosine decisions.
        ``encoded`` / ``index``: reuse an encoder pass (``forward(...).encoded``) and score the
        pairs of another entity index (the entities the span head found) instead of the batch's."""
        encoded = self.encode(batch) if encoded is None else encoded
        index = batch.entities if index is None else index
        if exact:
            scorer, precision = self.scorer, contextlib.nullcontext()
        else:
            scorer, _, precision = self._inference_heads(encoded.words.device)
        with precision:
            ents = pool_entities(encoded.words, encoded.attention, index, self.config.pooling)
            return scorer.pair_representations(ents, index).float()

    def score_spans(self, encoded: EncodedBatch, batch: ModelBatch, types: torch.Tensor) -> torch.Tensor:
        """Entity logits ``[B, S, T]`` of every candidate span of the batch."""
        if self.span_head is None:
            raise ValueError("this model has no entity (span) head")
        _, span_head, precision = self._inference_heads(encoded.words.device)
        with precision:
            return span_head(encoded.words, batch.span_start, batch.span_end, types, batch.word_shapes).float()

    def forward(
        self,
        batch: ModelBatch,
        labels: LabelEmbeddings | torch.Tensor | None = None,
        entity_types: LabelEmbeddings | torch.Tensor | None = None,
    ) -> GLiDREOutput:
        """One batched pass: relation logits of every entity pair against ``labels`` and, with
        ``entity_types``, entity logits of every candidate span. No host synchronisation."""
        encoded = self.encode(batch)
        out = GLiDREOutput(encoded)
        if entity_types is not None:
            types = entity_types.vectors if isinstance(entity_types, LabelEmbeddings) else entity_types
            out.span_logits = self.score_spans(encoded, batch, types)
        if labels is not None:
            vectors = labels.vectors if isinstance(labels, LabelEmbeddings) else labels
            out.relation_logits, out.threshold_logits = self.score_pairs(encoded, batch.entities, vectors)
        return out

    def _inference_heads(
        self, device: torch.device
    ) -> tuple[PairScorer, SpanHead | None, contextlib.AbstractContextManager]:
        """``(scorer, span_head, context)`` to run the heads in: the modules themselves and no
        autocast (training, fp32), or, for inference in bf16 (``config.head_precision``,
        :mod:`.precision`), copies cast to bf16 once and cached, run under bf16 autocast (which
        casts the fp32 activations). Autocast alone would re-cast every head weight for every
        batch, about an eighth of the heads' time.

        The copies are cached (:meth:`_cast_copies`).
        """
        dtype = torch.float32 if self.training else head_dtype(self.config.head_precision, device)
        if dtype is torch.float32:
            return self.scorer, self.span_head, contextlib.nullcontext()
        scorer, span_head = self._cast_copies("heads", (self.scorer, self.span_head), dtype)
        return scorer, span_head, torch.autocast(device_type=device.type, dtype=dtype)

    # -- inference (the convenience API; the work is in glidre_core.inference) ------------------
    def predictor(self, **kwargs: Any):
        """A :class:`glidre_core.inference.Predictor` over this model (label embeddings,
        thresholds and options fixed once); see its docstring for the options."""
        from glidre_core.inference import Predictor

        kwargs.setdefault("prototypes", self.prototypes)
        return Predictor(self, **kwargs)

    def predict_documents(
        self,
        docs: Iterable[Document],
        labels: Sequence[str] | LabelEmbeddings | None = None,
        threshold: float | dict[str, float] | None = None,
        batch_size: int = 8,
        top_k: int | None = None,
    ) -> list[list[TripletRow]]:
        """Relations for each document (given entities): a list of rows per document.

        ``threshold``: None = the threshold stored with the model (chosen on dev); a float; or a
        per-label dict (labels missing from it use the stored threshold). ``top_k`` keeps at most
        k labels per entity pair.
        """
        return self.predictor(relation_labels=labels, threshold=threshold, top_k=top_k,
                              batch_size=batch_size).predict(docs)

    def predict_relations(
        self,
        text: str,
        entities: list[dict[str, Any]] | list[Any],
        labels: Sequence[str] | LabelEmbeddings | None = None,
        threshold: float | dict[str, float] | None = None,
        doc_id: str = "input",
    ) -> list[TripletRow]:
        """Relations between ``entities`` (ids, optional type, mentions with char offsets) in ``text``."""
        from glidre_core.inference import document_from_text

        return self.predict_documents([document_from_text(text, entities, doc_id)], labels, threshold)[0]

    def extract_documents(
        self,
        docs: Iterable[Document | str],
        entity_labels: Sequence[str] | LabelEmbeddings | None = None,
        relation_labels: Sequence[str] | LabelEmbeddings | None = None,
        *,
        entity_threshold: float | dict[str, float] | None = None,
        threshold: float | dict[str, float] | None = None,
        coreference: str | None = None,
        flat_ner: bool = True,
        batch_size: int = 8,
        top_k: int | None = None,
        entity_recognizer: Any = "model",
    ) -> list[ExtractionResult]:
        """Entities and relations from raw text, one encoder pass per document (see
        :meth:`glidre_core.inference.Predictor.extract`; ``entity_recognizer="spacy"`` finds the
        entities with spaCy instead of the span head). Given entities are ignored."""
        return self.predictor(
            relation_labels=relation_labels, entity_labels=entity_labels, threshold=threshold,
            entity_threshold=entity_threshold, coreference=coreference, flat_ner=flat_ner,
            batch_size=batch_size, top_k=top_k, need_entity_types=True, entity_recognizer=entity_recognizer,
        ).extract(docs)

    def extract(
        self,
        text: str,
        entity_labels: Sequence[str] | LabelEmbeddings | None = None,
        relation_labels: Sequence[str] | LabelEmbeddings | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Entities (mentions with char offsets, type, score) and relations of ``text`` in one
        call; see :meth:`extract_documents` for the options."""
        result = self.extract_documents([text], entity_labels, relation_labels, **kwargs)[0]
        return {"entities": result.entities, "relations": result.relations}

    # -- persistence (glidre_core.modeling.persistence) ----------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` holding only what differs from the bases."""
        from glidre_core.modeling.persistence import save_pretrained

        return save_pretrained(self, directory)

    def weights_as_saved(self) -> contextlib.AbstractContextManager[None]:
        """A block in which the model computes what it computes saved and reloaded (its stored
        tensors rounded to ``config.save_dtype``; see :func:`.persistence.weights_as_saved`)."""
        from glidre_core.modeling.persistence import weights_as_saved

        return weights_as_saved(self)

    def load_weights(self, path: str | Path, allow_missing: tuple[str, ...] = ()) -> None:
        """Load a ``save_pretrained`` weights file strictly (see :mod:`.persistence`)."""
        from glidre_core.modeling.persistence import load_weights

        load_weights(self, path, allow_missing)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "GLiDRE":
        """Load strictly and offline: every stored tensor must match, every other must be base."""
        from glidre_core.modeling.persistence import from_pretrained

        return from_pretrained(cls, directory, device)
